"""The tests of this provider alone (`stable_diffusion_finetune`): its parser against the
vendor's examples and the real answers in ../fixtures/, its requests, listings, finish times."""
