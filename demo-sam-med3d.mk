# To merge into the Makefile (add demo-sam-med3d to .PHONY):
demo-sam-med3d: install  ## tiny SAM-Med3D on the generated CT-like scans: fit, then the 5-click native test
	$(PYTHON) -m data_tools.synthetic --output $(DEMO_DATA)/raw --num_cases 24 --seed 0
	$(PYTHON) -m segfm fit --config configs/sam_med3d/demo.yaml --data.init_args.root $(DEMO_DATA)/raw \
		--trainer.logger.init_args.version $(RUN)
	$(PYTHON) -m segfm test --config configs/sam_med3d/demo.yaml --data.init_args.root $(DEMO_DATA)/raw \
		--trainer.logger.init_args.version $(RUN) --ckpt_path runs/sam_med3d_demo/$(RUN)/checkpoints/last.ckpt
	@echo "run folder: runs/sam_med3d_demo/$(RUN)"
