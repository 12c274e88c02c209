#!/usr/bin/env python
"""Run an experiment or a sweep, locally or as one SLURM job array.

usage: python jobs/launch.py [run|status|show] [key=value ...] [KEY]

  python jobs/launch.py sweep=ae_latent                      # every run, here, then the summary
  python jobs/launch.py sweep=ae_latent preset=smoke         # a quick look (few steps, 2 dims)
  python jobs/launch.py sweep=ae_latent cluster=slurm        # one array, one task per run
  python jobs/launch.py sweep=ae_latent cluster=slurm dry_run=true   # show runs + sbatch script
  python jobs/launch.py status sweep=ae_latent               # state and log of every run
  python jobs/launch.py experiment=ae_latent model.latent_dim=8,16   # ad-hoc sweep axis
  python jobs/launch.py show experiment=ae_latent            # the composed, validated config
  python jobs/launch.py show sweep=ae_latent train.optimizer # one section (or value) of a sweep's first run

Overrides are Hydra's: group=option, key=value, key=a,b,c (a sweep axis), +new.key=value.
A sweep needs no -m: sweep=NAME or a comma list is one. Results: paths.results (HPCLAB_RESULTS).
"""

from __future__ import annotations

import shlex

from hpclab.launch.cli import groups_help, main_guard

COMMANDS = ("run", "status", "show")


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help", "help") for a in argv):
        from hpclab.launch.show import keys_help

        print(
            __doc__ + "\nconfig groups:\n" + groups_help() + "\n\nconfig keys, by section (show prints them with "
            "their values):\n" + keys_help()
        )
        return 0
    command = argv[0] if argv and argv[0] in COMMANDS else "run"
    overrides = argv[1:] if argv and argv[0] in COMMANDS else argv
    if command == "show":
        from hpclab.launch.show import show

        print(show(overrides))
        return 0

    from hpclab.launch import local, status, submit
    from hpclab.launch.sweep import plan as make_plan

    plan = make_plan(overrides)
    if command == "status":
        print("\n".join(status.status_lines(plan)))
        return 0
    cluster = plan.base.cluster.name
    if plan.base.dry_run:
        print(status.describe_plan(plan))
        if cluster == "slurm":
            from hpclab.launch.fit import fit_problem

            problem = fit_problem(plan.base.cluster)
            print(
                "\n# sbatch script submitit would submit:\n"
                + submit.render_sbatch(plan)
                + (f"\n# warning: {problem}" if problem else "")
            )
        return 0
    if cluster == "slurm":
        arrays = submit.submit_slurm(plan)
        if arrays:
            queued = sum(arrays.values())
            done = (
                f"{len(plan) - queued} of the sweep's {len(plan)} complete or queued already; "
                if queued < len(plan)
                else ""
            )
            print(
                f"submitted array job {', '.join(arrays)} ({queued} runs); {done}"
                f"results: {plan.group_dir}/; "
                f"status: python jobs/launch.py status {shlex.join(overrides)}"
            )
        return 0
    local.run_local(plan)
    print(f"results: {plan.group_dir}/")
    return 0


if __name__ == "__main__":
    main_guard(main)
