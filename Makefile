# segfm: the two commands are `make demo` and `make test`.
PYTHON ?= python
RUN ?= $(shell date +%Y%m%d-%H%M%S)
DEMO_DATA ?= demo_data

.PHONY: install demo test bench lint clean

install:  ## install segfm with its test tools (CPU torch first, so pip never pulls a CUDA build)
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[tests,dev]"

demo: install  ## generate data, preprocess, fine-tune a tiny MedSAM, test, export: one run folder
	$(PYTHON) -m data_tools.synthetic --output $(DEMO_DATA)/raw --num_cases 24 --seed 0
	$(PYTHON) -m data_tools.pre_ct_mr --nnunet $(DEMO_DATA)/raw --output $(DEMO_DATA)/medsam \
		--image_size 128 --prefix CT_Synth --min_size_3d 50 --min_size_2d 10
	$(PYTHON) -m segfm fit --config configs/medsam/demo.yaml --trainer.logger.init_args.version $(RUN)
	$(PYTHON) -m segfm test --config configs/medsam/demo.yaml --trainer.logger.init_args.version $(RUN) \
		--ckpt_path runs/medsam_demo/$(RUN)/checkpoints/last.ckpt
	$(PYTHON) -m segfm export --ckpt_path runs/medsam_demo/$(RUN)/checkpoints/last.ckpt \
		--format sam --output runs/medsam_demo/$(RUN)/medsam_demo.pth
	@echo "run folder: runs/medsam_demo/$(RUN)"

test: install  ## run the test suite (CPU, a few minutes)
	$(PYTHON) -m pytest -q

bench: install  ## speed and memory against the official implementations (markdown tables)
	$(PYTHON) benchmarks/run.py

lint:  ## ruff
	$(PYTHON) -m ruff check segfm data_tools tests benchmarks

clean:  ## remove generated data, runs and build files (never touches your own data)
	rm -rf runs $(DEMO_DATA) build *.egg-info .pytest_cache .ruff_cache
