"""The one schema of every option: its type, its default and a one-line comment.

Defaults here are the paper's CUB-200-2011 settings (docs/METHOD.md §4) unless a comment
says otherwise. YAML files in ``configs/`` overlay these, and ``KEY VALUE`` pairs on the command
line overlay the YAML. ``ibc_geo.config.loader`` does the merging and checks the invariants.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

# Closed sets of values (open sets, data.name and graph.topology, come from registries).
CHOICES = {
    "device": ["auto", "cpu", "cuda"],
    "model.pooling": ["max", "avg", "model"],
    "graph.similarity": ["correlation", "cosine"],
    "mpn.attention_path": ["auto", "dense", "sparse"],
    "mpn.attention_logits": ["dot", "cosine"],
    "mpn.attention_qk_init": ["independent", "shared"],
    "train.amp_dtype": ["bfloat16", "float16"],
    "train.optimizer": ["radam", "adamw", "sgd"],
    "eval.selection": ["val", "test"],
    "data.on_corrupt": ["skip", "error"],
    "sampler.epoch_length": ["official", "cover"],
    "eval.on_corrupt": ["error", "drop"],
    "data.interpolation": ["", "bilinear", "bicubic", "nearest"],
    "eval.refine": ["none", "dba", "aqe", "mpn"],
    "eval.refine_neighbours": ["knn", "reciprocal"],
}


@dataclass
class DataConfig:
    name: str = "digits"  # dataset: cub | cars | sop | inshop | imagefolder | digits | noisy_digits
    root: str = ""  # folder the dataset unpacks to (see datasets/README.md); unused by digits, noisy_digits
    image_size: int = 0  # training crop and test centre-crop side; 0 = the backbone's (ResNets: 227, the paper's; timm: its input size)
    resize_size: int = 0  # test-time resize before the centre crop; 0 = the backbone's (ResNets: image_size * 256 / 227; timm: image_size / crop_pct)
    interpolation: str = ""  # resize interpolation: "" = the backbone's (ResNets: bilinear; timm: its own, often bicubic) | bilinear | bicubic | nearest
    workers: int = 4  # DataLoader worker processes (0 = load in the main process)
    val_classes: float = 0.15  # held-out TRAINING classes for model selection: >= 1 a count, < 1 a fraction, 0 none
    random_erasing: float = 0.5  # probability of the official random erasing in training (paper: 0.5)
    mean: List[float] = field(default_factory=list)  # normalisation mean; [] = the backbone's (ResNets: ImageNet's 0.485 0.456 0.406, official: same)
    std: List[float] = field(default_factory=list)  # normalisation std; [] = the backbone's (ResNets: ImageNet's 0.229 0.224 0.225; official: 0.299 0.224 0.225, a typo)
    crop_scale: float = 0.08  # smallest area fraction of RandomResizedCrop (paper/torchvision: 0.08)
    hflip: bool = True  # random horizontal flips in training (paper: on)
    on_corrupt: str = "skip"  # unreadable TRAINING image: skip (warn, count, another of its class) | error


@dataclass
class SamplerConfig:
    classes_per_batch: int = 6  # P: classes per batch (paper CUB: 6)
    samples_per_class: int = 9  # K: images per class in a batch (paper CUB: 9)
    batch_size: int = 0  # 0 = P * K; when set it must equal P * K
    epoch_length: str = "official"  # official (each class padded to (floor(n/K)+1)*K, chunks of K) | cover (each image once)
    random_pk: bool = False  # each epoch draw P from the divisors of P*K in [2, P*K/2], K = P*K/P (official CUB)


@dataclass
class ModelConfig:
    backbone: str = "resnet50"  # resnet18|34|50|101|152 (torchvision, paper: resnet50) | timm/<name> (e.g. timm/vit_small_patch16_224)
    pretrained: str = "imagenet"  # imagenet | hub (the backbone's published weights) | none | path to a local .pth / .safetensors
    embedding_dim: int = 512  # size of the embedding f_i after the Linear reduction (paper: 512)
    pooling: str = "max"  # global pooling of the last feature map: max (paper) | avg | model (a timm model's own, a ViT's CLS token)
    channels_last: bool = True  # channels_last memory format for the trunk (much faster for CNNs on CPU and GPU)
    backbone_kwargs: Dict[str, Any] = field(default_factory=dict)  # timm.create_model keywords, e.g. {img_size: 64, patch_size: 8}


@dataclass
class GraphConfig:
    topology: str = "full"  # batch graph: full | knn | threshold | none | self | random | same_class
    k: int = 10  # in-degree of knn (itself included) and random (plus itself) graphs
    threshold: float = 0.5  # threshold graph: keep edges whose weight exceeds this
    similarity: str = "correlation"  # edge weight relu(sim): correlation (paper) | cosine


@dataclass
class MPNConfig:
    num_layers: int = 1  # message passing layers L (paper CUB: 1)
    num_heads: int = 2  # attention heads H (paper CUB: 2)
    dropout: float = 0.1  # dropout on attention coefficients and residual branches (paper: 0.1)
    attention_path: str = "auto"  # auto (fastest for the graph) | dense (SDPA) | sparse (MessagePassing)
    input_norm: bool = True  # the MPN receives f / ||f|| (official output_train_enc: plain)
    input_proj: bool = True  # Linear(d, d) before the first layer, PyTorch's default init (official dim_red)
    attention_sink: bool = True  # softmax with a zero logit in the denominator: exp(s)/(1 + sum exp(s)) (official)
    concat_layers: bool = False  # the MPN head sees all L layers' outputs concatenated, L*d (official Cars: cat 1)
    # Beyond the paper (README "Attention that attends"): ways out of the uniform-attention saddle.
    attention_logits: str = "dot"  # dot: <q,k>/sqrt(d/H) (paper) | cosine: tau_h * cos(q,k), tau_h learnable (Swin V2)
    attention_scale_init: float = 10.0  # initial tau_h of cosine logits, in (0, 100] (Swin V2: 10); cosine only
    attention_qk_init: str = "independent"  # independent (paper) | shared: W_k starts as a copy of W_q
    input_scale: float = 1.0  # the normalised input is multiplied by this (sqrt(d): a LayerNorm output's norm)



@dataclass
class LossConfig:
    temperature: float = 0.2  # logits are divided by T (paper CUB: 0.2)
    label_smoothing: float = 0.1  # label smoothing of both cross-entropies (official code: 0.1)
    backbone_weight: float = 1.0  # weight of the backbone loss (paper: 1, its cross-entropy)
    mpn_weight: float = 1.0  # weight of the MPN cross-entropy (paper: 1; 0 disables the MPN loss)
    backbone: str = "ce"  # backbone loss: ce (the paper's, on backbone logits / T) | pml/<LossName> on the embeddings (e.g. pml/ProxyAnchorLoss)
    backbone_kwargs: Dict[str, Any] = field(default_factory=dict)  # keywords of the pml loss, e.g. {margin: 0.1, alpha: 32}; num_classes, embedding_size filled in
    miner: str = ""  # "" = none | pml/<MinerName> picking the pml loss's pairs/triplets (e.g. pml/MultiSimilarityMiner)
    miner_kwargs: Dict[str, Any] = field(default_factory=dict)  # keywords of the miner, e.g. {epsilon: 0.1}
    lr_mult: float = 100.0  # the loss's own parameters (proxies) learn at train.lr * lr_mult (Proxy Anchor's code: 100)


@dataclass
class TrainConfig:
    epochs: int = 70  # training epochs (paper: 70)
    lr: float = 1.5637e-4  # RAdam learning rate (paper CUB)
    weight_decay: float = 6.0597e-6  # RAdam decoupled weight decay, p -= lr * wd * p (paper CUB)
    optimizer: str = "radam"  # radam (paper; decoupled weight decay) | adamw | sgd (momentum, L2 weight decay)
    momentum: float = 0.9  # sgd momentum
    backbone_lr_mult: float = 1.0  # the pretrained trunk learns at lr * this (the embedding, classifiers, MPN at lr); < 1 for ViTs
    warmup_epochs: int = 0  # linear warm-up: lr * min(1, (epoch - 1 + (iteration + 1) / iterations) / warmup_epochs); 0 = none
    lr_drop_epochs: List[int] = field(default_factory=lambda: [31, 51])  # reload best, lr /= 10 at these epochs
    lr_drop_factor: float = 0.1  # multiplier of the learning rate at each drop (paper: 0.1)
    lr_drop_cumulative: bool = False  # false: lr = lr * factor at every drop (official); true: lr * factor^drops
    amp: bool = False  # autocast mixed precision (CUDA only; ignored on CPU)
    sync_bn: bool = False  # under torchrun: backbone BatchNorm over the global batch (what equals one process)
    amp_dtype: str = "bfloat16"  # autocast dtype: bfloat16 | float16 (float16 uses a grad scaler)
    resume: bool = False  # continue from output_dir/checkpoints/last.pt
    overwrite: bool = False  # allow starting afresh in an output_dir that already holds a run
    iters_per_epoch: int = 0  # 0 = the sampler's epoch length; > 0 caps it (quick runs, tests)
    log_every: int = 10  # iterations between TensorBoard scalar writes


@dataclass
class EvalConfig:
    every: int = 1  # evaluate the selection split every this many epochs (and at the last epoch)
    recall_k: List[int] = field(default_factory=lambda: [1, 2, 4, 8])  # Ks of Recall@K (CUB/Cars: 1 2 4 8)
    selection: str = "val"  # split that picks the best checkpoint: val (honest) | test (paper's code)
    metric: str = "recall@1"  # selection metric: a key of the metrics dict (recall@1, map@r, nmi, ...)
    batch_size: int = 128  # images per batch when extracting embeddings
    nmi: bool = True  # compute NMI (faiss k-means with k = number of classes)
    kmeans_iters: int = 300  # k-means iterations per restart for NMI (scikit-learn KMeans: 300)
    kmeans_redo: int = 10  # k-means restarts (k-means++ seeding each), the best inertia kept (scikit-learn: 10)
    chunk_size: int = 4096  # queries per chunk of the exact faiss search (bounds memory)
    on_corrupt: str = "error"  # unreadable val/test image: error (name it) | drop (leave it out, recorded in metrics.json)
    # Test-time refinement, reported beside the backbone-only metrics (never the headline, never for selection):
    refine: str = "none"  # none | dba (mean of neighbours) | aqe (alpha query expansion) | mpn (official test-time MPN)
    refine_k: int = 8  # items per group, the item itself included (>= 2, below the gallery size)
    refine_alpha: float = 3.0  # aqe: neighbour weights cos^alpha
    refine_neighbours: str = "knn"  # knn (nearest) | reciprocal (the official k-reciprocal rule, k1 / k2 below)
    refine_k1: int = 30  # reciprocal: forward-list length (official 30)
    refine_k2: int = 15  # reciprocal: the candidates' list length (official round(k1 / 2))
    refine_batch_nodes: int = 8192  # mpn: graph nodes (groups x refine_k) per forward pass


@dataclass
class Config:
    output_dir: str = "output/run"  # run folder: config.yaml, checkpoints/, TensorBoard events, metrics.json
    seed: int = 0  # seeds python, numpy, torch, the sampler and the validation split
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower; exact resume on CPU holds anyway)
    data: DataConfig = field(default_factory=DataConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    mpn: MPNConfig = field(default_factory=MPNConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
