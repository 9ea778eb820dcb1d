# Benchmarks of issue 8 (docs/performance.md). PY: the project's interpreter.
PY ?= .venv/bin/python

.PHONY: bench bench-quick bench-gpu

bench:        ## every CPU benchmark, one table of results vs. targets (~10 min on 2 cores)
	$(PY) benchmarks/run_all.py

bench-quick:  ## the same with fewer rounds: checks that everything runs (not a measurement)
	$(PY) benchmarks/run_all.py --quick

bench-gpu:    ## ResNet-50 images/s and MFU vs. a hand-tuned loop (needs a CUDA GPU)
	$(PY) benchmarks/gpu_profile.py
