"""Subcommands of the `uplift-diffusion` CLI (one module each: HELP, add_arguments, run)."""
