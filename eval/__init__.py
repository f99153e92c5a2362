"""The paper's generative benchmarks and their metrics (appendix B.2).

- :mod:`uplift_diffusion.eval.metrics`: FID (torchmetrics / clean-fid), patch-FID, SSIM, PSNR, CLIP score.
- :mod:`uplift_diffusion.eval.sr`: super-resolution 256 -> 1024 (Table 4), any image folder, VAE and upsampler.
- :mod:`uplift_diffusion.eval.coco`, :mod:`uplift_diffusion.eval.relaion`: text-to-image 512 -> 1024 (Tables 2, 3),
  sharing :mod:`uplift_diffusion.eval.text2img`.
- :mod:`uplift_diffusion.eval.latency`: 3 warm-up + 10 timed batches, optional torch.compile.
- :mod:`uplift_diffusion.eval.common`: the resumable results folder, tables, grids, seeds.

Command line: ``uplift-diffusion eval {sr,coco,relaion} ...`` or ``python -m uplift_diffusion eval <name> ...``.
"""
