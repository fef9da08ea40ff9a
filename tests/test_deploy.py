"""What can be checked of deploy/ here (no cluster, no Kubernetes): the Serve config and the
RayService's serveConfigV2 pass Ray Serve's own schema, and their import path builds our app."""

from __future__ import annotations

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
pytest.importorskip("ray.serve")
DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def serve_configs():
    config = yaml.safe_load((DEPLOY / "serve_config.yaml").read_text())
    service = yaml.safe_load((DEPLOY / "rayservice.yaml").read_text())
    return {"serve_config": config, "rayservice": yaml.safe_load(service["spec"]["serveConfigV2"])}


@pytest.mark.parametrize("name", ["serve_config", "rayservice"])
def test_the_config_passes_ray_serves_schema_and_builds_our_app(name):
    import importlib

    from ray.serve.deployment import Application
    from ray.serve.schema import ServeDeploySchema

    config = serve_configs()[name]
    schema = ServeDeploySchema.model_validate(config) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(config)
    (application,) = schema.applications
    module, _, builder = application.import_path.partition(":")
    built = getattr(importlib.import_module(module), builder)(application.args)
    assert isinstance(built, Application)
    deployments = {deployment.name: deployment for deployment in application.deployments}
    assert set(deployments) == {"Generator", "Router"}
    assert deployments["Generator"].ray_actor_options.num_gpus == 1  # one GPU per generator replica


def test_the_rayservice_gives_each_gpu_worker_one_gpu():
    service = yaml.safe_load((DEPLOY / "rayservice.yaml").read_text())
    (workers,) = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    (container,) = workers["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert service["kind"] == "RayService" and service["apiVersion"] == "ray.io/v1"
