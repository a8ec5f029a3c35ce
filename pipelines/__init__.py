"""Hub-side code files, installed as `diffusers_binflow.hub_code` (see README.md here)."""
