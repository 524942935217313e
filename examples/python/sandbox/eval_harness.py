"""Score a policy over seeded episodes in sandboxes with rlmesh.evaluate.

    uv run python examples/python/sandbox/eval_harness.py [--episodes 12] [--concurrency 4] [--results PATH]

A pool of at most --concurrency sandboxes runs the episodes, each sandbox reused across
episodes by reset(seed=...). With --results, every episode is appended to a JSON Lines file as
it ends; run the same command again after Ctrl-C and it resumes where it stopped.
"""

import argparse

import rlmesh


def policy(obs):
    # A hand-written CartPole controller: push towards the side the pole leans to.
    return int(obs[2] + 0.5 * obs[3] > 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--results", default=None)
    args = parser.parse_args()
    report = rlmesh.evaluate(policy, "CartPole-v1", episodes=args.episodes, concurrency=args.concurrency,
                             results=args.results, episode_timeout=60, packages=["gymnasium==1.3.0"])
    for episode in report.episodes:
        print(f"seed={episode['seed']} return={episode['return']} error={episode['error']}")
    print(report.table())


if __name__ == "__main__":
    main()
