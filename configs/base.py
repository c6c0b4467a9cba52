"""The paper's recipe on eMotions (SPEC §5): AdamW 1.5e-4, wd 0.02, 30 epochs, batch 32 (8 x 4 accumulation),
warm cosine schedule, EP-CE with lambda 0.5, fp32, seed 1.

  python -m avcanet_jax.main --config=configs/base.py --workdir=W [--config.batch_size=64 ...]
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 1

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "emotions/full"
    c.data.data_dir = ml_collections.config_dict.placeholder(str)
    c.data.num_workers = 8
    c.data.num_segments = 16
    c.data.frames_per_segment = 8
    c.data.crop_size = 112
    c.data.audio_frames = 4096
    c.data.augment_prob = 0.3

    c.model = ml_collections.ConfigDict()
    c.model.num_classes = 6
    # A size name ("tiny", "small", "base") or a dict of SwinConfig fields.
    c.model.swin = ml_collections.FieldReference("tiny", field_type=object)
    c.model.resnet_depth = 34
    c.model.resnet_width = 64
    # The audio ResNet's stem and first stage on two MFCC chunks side by side in the channels: "auto" (on
    # TPUs, whose 128 lanes the first stage's 64 channels fill by half), True or False. Same result.
    c.model.resnet_pairs = ml_collections.FieldReference("auto", field_type=object)
    c.model.dim = 512
    c.model.fusion = "concat"
    c.model.modalities = "audio_visual"
    c.model.use_local = True
    c.model.use_global = True
    c.model.lgf_levels = 4
    c.model.lgf_heads = 8  # Local (pyramid) attention heads.
    c.model.lgf_global_heads = 8  # Heads of the global cross-attention.
    c.model.lgf_ffn_dim = 512
    c.model.lgf_dropout = 0.5  # The authors' residual and feed-forward dropout in LGF.
    c.model.lgf_attention_dropout = 0.1  # On the local stage's attention probabilities.
    c.model.visual_dropout = 0.5  # On pooled Swin features.
    c.model.faithful_level_weights = True
    c.model.faithful_clone_init = True  # The pyramid's q/k/v/out and feed-forwards start equal, as the authors'.
    c.model.bfloat16 = False
    # Recompute Swin blocks in the backward pass: False, True ("full") or "dots" (keep matmul outputs).
    c.model.remat = ml_collections.FieldReference(False, field_type=object)
    # Window attention: "auto" (the Pallas kernel on TPUs, "cudnn" on GPUs in bfloat16, else "xla"),
    # "xla" (the reference), "dot_product" (jax.nn.dot_product_attention, XLA's path), "cudnn" (the same
    # call through cuDNN's fused kernel; NVIDIA GPUs, bfloat16) or "pallas" (the TPU kernel, scores kept
    # on chip; interpreted off TPUs, for tests). See avcanet_jax/window_attention.py and the README's benchmarks.
    c.model.attention = "auto"
    # The Swin MLPs' GELU in its tanh form instead of erf: a speed option (README: 6% off a TPU v5e step
    # by the compiler's estimate), off by default because torchvision's weights use the exact GELU.
    c.model.approximate_gelu = False

    c.loss = "ep_ce"  # or "ce"
    c.ep_ce_lambdas = (0.5, 0.5, 0.5)  # positive, neutral, negative

    c.batch_size = 8  # Per optimizer micro-step, over all devices.
    c.grad_accumulation = 4  # Effective batch 32.
    c.num_epochs = 30
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.lr = 1.5e-4
    c.optimizer.weight_decay = 0.02
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.grad_clip_norm = 0.0  # 0: no clipping (the authors clip nothing).
    # AdamW's first moment in float32 (as the authors' PyTorch AdamW) or bfloat16: 4 of AdamW's 26 bytes per
    # parameter and step less (README, Benchmarks), the second moment and the weights staying float32.
    c.optimizer.mu_dtype = "float32"
    # AdamW's state split over the mesh's data axis (ZeRO stage 1): each device updates its part, then the
    # weights are all-gathered. Less memory and a shorter optimizer pass, but more interconnect traffic
    # per step (README, Benchmarks); off, every device keeps and updates all of it.
    c.optimizer.shard_over_data = False
    c.schedule = ml_collections.ConfigDict()
    c.schedule.warmup_epochs = 1.5
    c.schedule.decay_end_epoch = 28.5
    c.schedule.warmup_start = 0.1
    c.schedule.min_ratio = 0.01

    c.mesh = ml_collections.ConfigDict()
    c.mesh.axes = {"data": -1, "fsdp": 1, "tensor": 1}

    # Evaluation views per video, softmax probabilities averaged (SPEC §6, Video Swin's multi-view testing):
    # temporal = snippet offsets spread inside each TSN segment; spatial 3 = square crops at the start,
    # centre and end of the long side. 1 x 1 is the paper's protocol (one centred clip).
    c.eval = ml_collections.ConfigDict()
    c.eval.temporal_views = 1
    c.eval.spatial_views = 1

    c.init_from = ml_collections.config_dict.placeholder(str)  # Output of avcanet_jax.import_weights.
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 3
    c.log_every_steps = 50
    # The tested state is the best on validation (by UAR); False: no validation split needed, the last
    # state is tested (for datasets without one; a choice the user makes explicitly).
    c.select_on_validation = True
    c.max_steps = 0  # > 0: save and stop after this many steps in this run (a scheduled preemption).
    return c
