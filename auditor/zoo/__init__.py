"""A zoo of tiny text-to-image models and the procedural world they are trained on.

Attribution methods need models whose training sets are known exactly; training real
Stable Diffusion is out of reach on CPU, so the zoo trains tiny models with the same
architecture (CLIP text encoder, UNet, VAE) on a small captioned world instead.

The modules, each one concept: `data` (the captioned world), `tokenizer` (CLIP's BPE),
`models` (the tiny components), `train` (the VAE trainer; UNets go through `auditor.finetune`),
`launder` (image laundering of a training set: the laundering study's attacks), `pipelines` (components saved as StableDiffusionPipeline or StableDiffusionXLPipeline folders,
and what differs between the two families), `config` (roles and presets), `build` (the
content-addressed cache and the parallel builds). Import them by name; nothing is loaded here.
"""

__all__ = ["build", "config", "data", "launder", "models", "pipelines", "tokenizer", "train"]
