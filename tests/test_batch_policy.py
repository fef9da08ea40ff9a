"""The batching policies on their own: admission and composition over stand-in jobs, no engines."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sd_struct_rt.errors import InputError
from sd_struct_rt.serve.policy import DEFAULT_POLICY, POLICIES, Inflight, Policy, Single, Static, policy_named

SMALL, LARGE = (64, 64, "values"), (128, 128, "values")


@dataclass
class Stand:
    """What a policy reads of a job."""

    rows: int = 2
    group: tuple = SMALL
    arrived: float = 0.0


def jobs(*rows: int, group: tuple = SMALL) -> list[Stand]:
    return [Stand(count, group, float(index)) for index, count in enumerate(rows)]


def test_the_registry_names_each_policy_once_and_inflight_is_the_default():
    assert list(POLICIES) == ["inflight", "static", "single"]
    assert DEFAULT_POLICY == "inflight"
    for name, policy in POLICIES.items():
        assert isinstance(policy_named(name), policy) and isinstance(policy_named(name), Policy)
        assert policy_named(name).name == name


@pytest.mark.parametrize("name", ["loud", "", None, 3, ["inflight"]])
def test_an_unknown_policy_is_refused_with_the_names(name):
    with pytest.raises(InputError, match=r"^policy must be one of inflight, static, single, not "):
        policy_named(name)


# --- admission ----------------------------------------------------------------------------------

def test_inflight_admits_in_queue_order_while_the_rows_fit():
    assert Inflight().admit(jobs(2, 2, 2, 2), [], capacity=6) == 3
    assert Inflight().admit(jobs(2, 2), [], capacity=4) == 2
    assert Inflight().admit([], [], capacity=4) == 0


def test_inflight_never_lets_a_later_job_pass_one_that_does_not_fit():
    assert Inflight().admit(jobs(2, 6, 2), [], capacity=6) == 1  # the 2 behind the 6 waits its turn


def test_inflight_joins_a_running_set_of_any_group_up_to_the_capacity():
    running = jobs(4, group=LARGE)
    assert Inflight().admit(jobs(2, 2), running, capacity=8) == 2
    assert Inflight().admit(jobs(2, 2), running, capacity=6) == 1
    assert Inflight().admit(jobs(2), running, capacity=4) == 0


@pytest.mark.parametrize("policy", [Inflight(), Static(), Single()], ids=lambda policy: policy.name)
def test_a_job_larger_than_the_capacity_runs_alone(policy):
    assert policy.admit(jobs(10, 2), [], capacity=4) == 1  # admitted into an empty set, and nothing after it
    assert policy.admit(jobs(2, 10), [], capacity=4) == 1  # but not beside another
    assert policy.admit(jobs(10), jobs(2), capacity=4) == 0  # nor into a running set


def test_static_forms_one_group_at_its_start_and_then_admits_nothing():
    queue = [*jobs(2, 2), Stand(2, LARGE, 2.0), Stand(2, SMALL, 3.0)]
    assert Static().admit(queue, [], capacity=16) == 2  # the first group, up to the first other job
    assert Static().admit(queue[2:], [], capacity=16) == 1
    assert Static().admit(jobs(2, 2, 2), [], capacity=4) == 2  # and within the capacity
    assert not Static().takes_newcomers(jobs(2))
    assert Static().admit(jobs(2), jobs(2), capacity=16) == 0  # newcomers wait for the whole batch


def test_single_admits_one_and_then_nothing_until_it_is_done():
    assert Single().admit(jobs(2, 2, 2), [], capacity=16) == 1
    assert not Single().takes_newcomers(jobs(2))
    assert Single().admit(jobs(2), jobs(2), capacity=16) == 0


def test_only_inflight_takes_newcomers_while_running():
    assert Inflight().takes_newcomers(jobs(2))
    assert all(policy.takes_newcomers([]) for policy in (Inflight(), Static(), Single()))


# --- composition --------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", [Inflight(), Static(), Single()], ids=lambda policy: policy.name)
def test_the_group_that_has_waited_longest_goes_first(policy):
    early_large, small, late_large = Stand(2, LARGE, 1.0), Stand(2, SMALL, 2.0), Stand(4, LARGE, 3.0)
    running = [small, late_large, early_large]
    assert policy.compose(running) == [late_large, early_large]  # in running order
    assert policy.compose([small, late_large]) == [small]
    assert policy.compose([]) == []


def test_a_tie_goes_to_the_first_running_job():
    first, second = Stand(2, LARGE, 1.0), Stand(2, SMALL, 1.0)
    assert Inflight().compose([first, second]) == [first]


# --- a few steps, as the batcher takes them -----------------------------------------------------

def run_steps(policy: Policy, arrivals: dict[int, list[Stand]], steps: dict[int, int], capacity: int) -> list[int]:
    """Requests per UNet call: at each step jobs arrive, the policy admits and composes, and each
    composed job takes one step (``steps`` per job, by arrival time)."""
    queue, running, done, calls = [], [], {}, []
    for step in range(100):
        queue += arrivals.get(step, [])
        admitted = policy.admit(queue, running, capacity)
        running += queue[:admitted]
        del queue[:admitted]
        call = policy.compose(running)
        if not call:
            if not queue:
                break
            continue
        calls.append(len(call))
        for job in call:
            done[job.arrived] = done.get(job.arrived, 0) + 1
            if done[job.arrived] == steps[job.arrived]:
                running.remove(job)
    return calls


@pytest.mark.parametrize("name, calls", [("inflight", [1, 2, 2, 2, 1, 1]), ("static", [1] * 9),
                                         ("single", [1] * 9)])
def test_a_newcomer_joins_the_running_batch_only_in_flight(name, calls):
    arrivals = {0: [Stand(2, SMALL, 0.0)], 1: [Stand(2, SMALL, 1.0)]}  # the second comes during the first
    assert run_steps(policy_named(name), arrivals, steps={0.0: 6, 1.0: 3}, capacity=4) == calls
