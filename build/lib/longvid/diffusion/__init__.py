"""Diffusion formulation of the seed (seed-analysis §3): CogVideoX's zero-terminal-SNR schedule with SNR
shift (schedule.py), the v-prediction training loss with stratified timesteps and text dropout
(loss.py), and DDIM / DPM-Solver++(2M) ODE and SDE samplers with (dynamic) CFG (samplers.py).

Import-light like `longvid.models`: import the submodule you need.
"""
