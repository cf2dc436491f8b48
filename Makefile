# segfm: the two commands are `make demo` and `make test`.
PYTHON ?= python
RUN ?= $(shell date +%Y%m%d-%H%M%S)
DEMO_DATA ?= demo_data
SEGVOL_CATEGORIES ?= liver,spleen,kidney_left,kidney_right,aorta

.PHONY: install browser demo demo-seeds demo-sam-med3d demo-segvol demo-biomedparse demo-embedding demo-challenge test bench lint clean

install:  ## install segfm with its test tools (CPU torch first, so pip never pulls a CUDA build)
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[tests,dev,serve]"

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

SEEDS ?= 2023 1 2

demo-seeds: install  ## the MedSAM demo once per seed in SEEDS, then the held-out DSC / NSD of each
	$(PYTHON) -m data_tools.synthetic --output $(DEMO_DATA)/raw --num_cases 24 --seed 0
	$(PYTHON) -m data_tools.pre_ct_mr --nnunet $(DEMO_DATA)/raw --output $(DEMO_DATA)/medsam \
		--image_size 128 --prefix CT_Synth --min_size_3d 50 --min_size_2d 10
	for seed in $(SEEDS); do \
		$(PYTHON) -m segfm fit --config configs/medsam/demo.yaml --seed_everything $$seed \
			--trainer.logger.init_args.version $(RUN)-seed$$seed && \
		$(PYTHON) -m segfm test --config configs/medsam/demo.yaml \
			--trainer.logger.init_args.version $(RUN)-seed$$seed \
			--ckpt_path runs/medsam_demo/$(RUN)-seed$$seed/checkpoints/last.ckpt || exit 1; \
	done
	$(PYTHON) benchmarks/seed_table.py runs/medsam_demo/$(RUN)-seed*

demo-sam-med3d: install  ## tiny SAM-Med3D on the generated CT-like scans: fit, then the 5-click native test
	$(PYTHON) -m data_tools.synthetic --output $(DEMO_DATA)/raw --num_cases 24 --seed 0
	$(PYTHON) -m segfm fit --config configs/sam_med3d/demo.yaml --data.init_args.root $(DEMO_DATA)/raw \
		--trainer.logger.init_args.version $(RUN)
	$(PYTHON) -m segfm test --config configs/sam_med3d/demo.yaml --data.init_args.root $(DEMO_DATA)/raw \
		--trainer.logger.init_args.version $(RUN) --ckpt_path runs/sam_med3d_demo/$(RUN)/checkpoints/last.ckpt
	@echo "run folder: runs/sam_med3d_demo/$(RUN)"

demo-segvol: install  ## tiny SegVol on generated M3D-Seg data: build, fit, text-prompted zoom-out test
	$(PYTHON) -m data_tools.synthetic --output $(DEMO_DATA)/raw --num_cases 24 --seed 0
	$(PYTHON) -m data_tools.build_dataset --image-dir $(DEMO_DATA)/raw/imagesTr \
		--label-dir $(DEMO_DATA)/raw/labelsTr --code 0000 --categories $(SEGVOL_CATEGORIES) \
		--out $(DEMO_DATA)/m3d_seg
	$(PYTHON) -m data_tools.tiny_clip --output $(DEMO_DATA)/segvol/clip
	$(PYTHON) -m segfm fit --config configs/segvol/demo.yaml --data.init_args.root $(DEMO_DATA)/m3d_seg \
		--model.init_args.clip_dir $(DEMO_DATA)/segvol/clip --trainer.logger.init_args.version $(RUN)
	$(PYTHON) -m segfm test --config configs/segvol/demo.yaml --data.init_args.root $(DEMO_DATA)/m3d_seg \
		--model.init_args.clip_dir $(DEMO_DATA)/segvol/clip --trainer.logger.init_args.version $(RUN) \
		--ckpt_path runs/segvol_demo/$(RUN)/checkpoints/last.ckpt

demo-biomedparse: install  ## tiny BiomedParse on generated CVPR npz data: fit, then the text protocol
	$(PYTHON) -m data_tools.synthetic_npz --output $(DEMO_DATA)/biomedparse
	$(PYTHON) -m segfm fit --config configs/biomedparse/demo.yaml --data.init_args.root $(DEMO_DATA)/biomedparse \
		--trainer.logger.init_args.version $(RUN)
	$(PYTHON) -m segfm test --config configs/biomedparse/demo.yaml --data.init_args.root $(DEMO_DATA)/biomedparse \
		--trainer.logger.init_args.version $(RUN) --ckpt_path runs/biomedparse_demo/$(RUN)/checkpoints/last.ckpt

demo-embedding: install  ## tiny SAM anatomical embedding on generated scans: val_med per epoch
	$(PYTHON) -m data_tools.synthetic_embedding --output $(DEMO_DATA)/embedding --num_cases 8 \
		--texture_period 0 --anatomy_sigma 2.5
	$(PYTHON) -m segfm fit --config configs/anatomical_embedding/demo.yaml \
		--data.init_args.root $(DEMO_DATA)/embedding --trainer.logger.init_args.version $(RUN)

CHALLENGE = runs/challenge_demo/$(RUN)

demo-challenge: install  ## tiny MedSAM fine-tuned, exported as a CVPR 2025 submission, scored by the official loop
	$(PYTHON) -m data_tools.synthetic_npz --output $(DEMO_DATA)/challenge_npz --num_cases 16 --num_test 3
	$(PYTHON) -m data_tools.challenge_cases --root $(DEMO_DATA)/challenge_npz \
		--output $(DEMO_DATA)/challenge --no_boxes CT_SynthAbdomen_t02
	$(PYTHON) -m segfm fit --config configs/medsam/challenge_demo.yaml \
		--data.init_args.root $(DEMO_DATA)/challenge_npz --trainer.logger.init_args.version $(RUN)
	$(PYTHON) -m segfm export --ckpt_path $(CHALLENGE)/checkpoints/last.ckpt --format challenge \
		--output $(CHALLENGE)/submission
	$(PYTHON) -m segfm challenge-eval --submission $(CHALLENGE)/submission \
		--images $(DEMO_DATA)/challenge/interactive --gts $(DEMO_DATA)/challenge/gts \
		--output $(CHALLENGE)/challenge_eval
	@echo "run folder: $(CHALLENGE)"

browser:  ## Debian's chromium and chromedriver, which the web page's test drives (apt, as root)
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else \
		echo "the web page's test needs Debian's chromium and chromium-driver:"; \
		echo "  sudo apt-get install chromium chromium-driver"; exit 1; \
	fi

test: install browser  ## run the test suite (CPU, a few minutes)
	$(PYTHON) -m pytest -q

bench: install  ## speed and memory against the official implementations (markdown tables)
	$(PYTHON) benchmarks/run.py

lint:  ## ruff
	$(PYTHON) -m ruff check segfm data_tools tests benchmarks

clean:  ## remove generated data, runs and build files (never touches your own data)
	rm -rf runs $(DEMO_DATA) build *.egg-info .pytest_cache .ruff_cache
