"""``make demo`` draws what its prompt asks for: its own commands, run here, judged by the scorer."""

import re
from pathlib import Path

from PIL import Image

from sd_struct_rt.cli import main
from sd_struct_rt.shapes.scorer import score_image

MAKEFILE = Path(__file__).resolve().parent.parent / "Makefile"


def demo_settings() -> dict[str, str]:
    return dict(re.findall(r"^(DEMO_\w+) := (.+)$", MAKEFILE.read_text(), flags=re.M))


def test_the_demo_image_shows_the_prompts_objects_in_their_colours(tmp_path):
    settings = demo_settings()
    engines, image = tmp_path / "engines", tmp_path / "demo.png"
    assert main(["build-engine", "--model", settings["DEMO_MODEL"], "--backend", "auto", "--out", str(engines),
                 "--quiet"]) == 0
    assert main(["generate", settings["DEMO_PROMPT"], "--engine", str(engines), "--seed", settings["DEMO_SEED"],
                 "--out", str(image), "--quiet"]) == 0
    judgement = score_image(settings["DEMO_PROMPT"], Image.open(image))
    assert judgement.exact, judgement
