"""The benchmarks of diffusers-binflow: scripts that train, sample and score, and write JSON, Markdown and plots.

Run each as a module from the repository root, e.g. ``python -m benchmarks.synthetic_tv --smoke --output_dir /tmp/tv``
(``--help`` lists a script's options). What they share: `training_loop` (the one training loop), `reporting`
(summaries, recorded command lines and file output) and `digit_runs` (the digit benchmarks' methods and cached runs).
"""
