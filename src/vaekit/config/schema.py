"""The typed run configuration: one pydantic model per section, unknown keys rejected.

Every field here is public interface: YAML files, dotted CLI overrides (``train.batch_size=32``) and the
Python API all address the same names. Cross-field checks live in ``model_validator``s and name the key to change.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

INT64_MAX = 2**63 - 1
MAX_WIDTH = 65536
"""Largest channel count / layer width per ``model.hidden_dims`` entry."""
MAX_STAGES = 100
STAGE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


def _check_ints(value: Any) -> None:
    """Every integer (also inside lists and dicts) must fit in int64: torch, numpy and checkpoints store them so."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -INT64_MAX - 1 <= value <= INT64_MAX:
            raise ValueError("must fit in a 64-bit integer (at most 2**63 - 1 in size)")
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_ints(item)
    elif isinstance(value, dict):
        for item in value.values():
            _check_ints(item)


class Section(BaseModel):
    """Base of every section: strict keys, validated on assignment, floats finite, integers within int64."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, allow_inf_nan=False, use_attribute_docstrings=True
    )

    @field_validator("*", mode="after")
    @classmethod
    def _int64(cls, v: Any) -> Any:
        _check_ints(v)
        return v


def check_stage_name(name: str) -> str:
    """Stage names become file names (sample grids, checkpoints' state): letters, digits, '-', '_', '.'."""
    if not STAGE_NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(
            "must be a safe file name of 1-64 characters: use letters, digits, '-', '_', '.' ('.' and '..' refused)"
        )
    return name


# --------------------------------------------------------------------------------------------- run
class RunConfig(Section):
    name: str | None = None
    """Run name; the run directory is ``{dir}/{name}``. Default: ``{data.source}-{model.arch}-{timestamp}``."""
    dir: str = "runs"
    """Parent directory of runs."""
    seed: int = Field(0, ge=0, le=INT64_MAX)
    """Seeds the weights, data order, splits, procedural data, augmentation and noise."""
    overwrite: bool = False
    """Reuse ``{dir}/{name}`` if it exists (its checkpoints are deleted). Default: refuse, suggest --resume."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str | None) -> str | None:
        # The run directory is {dir}/{name}: a name must not climb out of run.dir or name a nested path.
        if v is None:
            return v
        if v.strip() in ("", ".", "..") or any(c in v for c in "/\\") or any(ord(c) < 32 for c in v):
            raise ValueError(
                "must be a single directory name: no '/', '\\' or control characters, not empty, '.' or '..' "
                "(put parent directories in run.dir)"
            )
        if len(v.encode("utf-8", "surrogatepass")) > 200:
            raise ValueError("must be at most 200 bytes (a directory name)")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:  # bytes the shell could not decode (a Latin-1 name in a UTF-8 locale)
            raise ValueError("must be UTF-8 text (it holds bytes that are not; write the name in UTF-8)") from None
        return v


# -------------------------------------------------------------------------------------------- data
DataSource = Literal[
    "shapes",
    "mnist",
    "image_folder",
    "moving_shapes",
    "video_folder",
    "audio_folder",
    "table",
    "tags",
    "records",
    "tensor",
    "webdataset",
    "hf",
]


class ShardsConfig(Section):
    """``data.source=webdataset``: tar shards (see docs/guides/shards-and-latents.md)."""

    member: str | None = None
    """The member (extension after the key, e.g. ``jpg``, ``png``, ``mp4``, ``flac``, ``npy``) holding ``x``.
    None: the first image/video/audio/array member of each sample."""
    label: str | None = None
    """The member holding ``y``: ``cls`` (an integer) or ``y.npy`` (an array). None: ``cls`` or ``y.npy`` when
    the first sample has one, else no labels."""
    val_path: str | None = None
    """Shards of the validation split (a brace pattern, glob or URL). None: a seeded ``data.val_fraction``
    (or ``data.split``) split of the samples of ``data.path``."""


class HFConfig(Section):
    """``data.source=hf``: a Hugging Face ``datasets`` dataset; ``data.path`` is a hub id, a ``save_to_disk``
    folder, or Parquet/Arrow files (a file, a glob or a folder of them)."""

    name: str | None = None
    """The dataset's configuration name (``load_dataset(path, name)``), hub ids only."""
    split: str = "train"
    """The split holding the training (and, without ``val_split``, the validation) samples."""
    val_split: str | None = None
    """A split of its own for validation (e.g. ``validation``). None: a seeded ``data.val_fraction`` split."""
    image_column: str | None = None
    """The column of images (PIL images or ``{"bytes", "path"}`` dicts): ``x`` is the image, as image_folder."""
    audio_column: str | None = None
    """The column of audio (``{"array", "sampling_rate"}`` or ``{"bytes", "path"}``): ``x`` is a segment, as
    audio_folder (``data.segment``, ``data.sample_rate``)."""
    tags_column: str | None = None
    """A column holding a list of tags (MusicCaps' ``aspect_list``): multi-hot ``x`` as the tags source (no image
    or audio column), else multi-hot ``y``. ``data.min_count``/``data.max_tags`` shape the vocabulary."""
    numeric_columns: list[str] | None = None
    """Numeric columns: ``x`` (no image/audio/tags column) or ``y`` beside an image/audio ``x``."""
    label_column: str | None = None
    """A class-label column (``ClassLabel`` or integers): ``y``."""
    streaming: bool = False
    """Read the dataset as an iterable stream (datasets' ``streaming=True``) and keep the first
    ``data.num_samples`` samples (required): for data sets larger than the disk, sampled from the head."""
    revision: str | None = None
    """A hub revision (branch, tag or commit)."""


class DataConfig(Section):
    source: DataSource = "shapes"
    """Where samples come from: built-in procedural data (shapes, moving_shapes), MNIST, files (image_folder,
    video_folder, audio_folder, table, tags, records), tar shards (webdataset), Hugging Face datasets (hf) or
    Python objects (tensor, set by ``vaekit.train(train_data=...)``)."""
    path: str | None = None
    """Directory (mnist: the IDX .gz files; image_folder: the image tree; video_folder: video files or frame
    folders; audio_folder: sound files) or file (table, tags, records)."""
    image_size: int | None = Field(None, ge=1, le=16384)
    """Images/frames are resized (short side) and cropped to this square size. Default: the source's native size."""
    channels: Literal[1, 2, 3] | None = None
    """Images/video: 1 (grayscale) or 3 (RGB); audio: 1 (mono mix-down) or 2 (stereo). Default: the source's
    own (audio: 1)."""
    crop: Literal["center", "random"] = "center"
    """image_folder: random crop for training (validation is always centred)."""
    flip: bool = False
    """Random horizontal flip (training only)."""
    frames: int = Field(8, ge=1, le=65536)
    """Frames per clip for video sources."""
    frame_stride: int = Field(1, ge=1)
    """video_folder: take every n-th frame (a clip spans ``frames * frame_stride`` source frames)."""
    num_samples: int | None = Field(None, ge=1)
    """Procedural sources: how many samples to generate; other sources: use only the first N (debugging)."""
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Held-out fraction for sources without their own validation split (``split`` wins when set)."""
    split: list[float] | None = None
    """``[train, val, test]`` fractions summing to 1, a seeded split (mnist: test is always t10k, so only
    ``val / (train + val)`` of the training files is used). None: ``val_fraction`` and no test split."""
    in_memory: Literal["auto", "always", "never"] = "auto"
    """auto: decode into one tensor when the data set is under ``max_memory_mb``; else stream through workers."""
    max_memory_mb: int = Field(2048, ge=1)
    """Memory budget for ``in_memory: auto``."""
    num_workers: int = Field(0, ge=0, le=1024)
    """DataLoader worker processes for streaming sources."""
    on_error: Literal["raise", "skip"] = "raise"
    """A corrupt or unreadable file: stop with its name, or skip it and count it in the log."""

    # audio_folder
    sample_rate: int | None = Field(None, ge=1)
    """audio_folder: resample every file to this rate (Hz). Default: the files' own rate (must all agree)."""
    segment: float = Field(1.0, gt=0.0)
    """audio_folder: clip length in SECONDS (``round(segment * sample_rate)`` samples); a random crop for
    training, the centre for validation/test; shorter files are zero-padded at the end."""
    labels: Literal["none", "folder", "filename_prefix"] = "none"
    """audio_folder: labels ``y`` from the parent folder name, or the file name up to its first ``_``/``-``."""

    # table / tags / records
    columns: list[str | int] | None = None
    """table: the columns to keep, in order: names, 0-based indices, index ranges ``"3:177"`` (Python slice:
    3 to 176; ``"1:"`` all but the first, ``":-1"`` all but the last), globs ``"label_*"`` (``*``, ``?``, ``[..]``)
    or regular expressions ``"re:^px\\d+$"`` (matching the whole name). An exact column name always wins.
    None: every column but ``id_column``."""
    id_column: str | int | None = None
    """table: a column to drop (an identifier)."""
    header: bool | None = None
    """table/tags/records CSV: whether the first row names the columns. None: sniffed."""
    normalize: Literal["none", "standard", "minmax"] = "none"
    """table: per-column scaling fitted on the training split only (statistics in ``data_meta.json``)."""
    kind: Literal["auto", "binary", "count", "continuous"] = "auto"
    """table: what the values are (``info.meta["kind"]``; binary suggests ``loss.recon=bce``). auto: detected."""
    impute: Literal["none", "mean", "zero"] = "none"
    """table: empty/NA/``?`` cells: an error naming row and column, the training-split column mean, or 0."""
    column: str | None = None
    """tags: the column holding each row's list of tags; npz tables: the array to read."""
    delimiter: str | None = None
    """tags: the separator of tags inside a cell that is a plain string (e.g. ``,`` or ``|``); None: cells must be
    lists (Python literal or JSON)."""
    min_count: int = Field(1, ge=1)
    """tags/records: keep tags (items) present in at least this many training rows (events)."""
    max_tags: int | None = Field(None, ge=1)
    """tags/records: keep at most this many of the most frequent tags (items)."""
    event_column: str | list[str] | None = None
    """records: the column(s) naming an event (one output row). eBird default: SAMPLING EVENT IDENTIFIER."""
    item_column: str | None = None
    """records: the column naming an item (one output column). eBird default: SCIENTIFIC NAME."""
    count_column: str | None = None
    """records: the column with counts (``values: count``; ``X`` counts as 1). eBird default: OBSERVATION COUNT."""
    values: Literal["presence", "count"] = "presence"
    """records: 1/0 per (event, item), or the summed count."""
    filter: dict[str, Any] | None = None
    """records: keep rows whose column equals the value (or one of a list of values), e.g.
    ``{"ALL SPECIES REPORTED": "1"}``. None: the eBird default (complete checklists) when that column exists."""
    events_path: str | None = None
    """records: a file listing every event (e.g. the eBird sampling file); events without records become rows of
    zeros (zero-filling). ``filter`` applies to it as well where its columns exist."""
    min_item_events: int = Field(1, ge=1)
    """records: drop items seen in fewer training events (alias of ``min_count`` for records; the larger wins)."""

    # table layout, test files and scaling (issue 19)
    test_path: str | None = None
    """table: a second file of the same columns used as the test split (data that comes as a train/test pair);
    ``data.path`` then gives only train and validation (``split``'s test share must be 0). Normalisation and
    imputation use statistics of the training split of ``data.path``."""
    shape: list[Annotated[int, Field(ge=1, le=MAX_WIDTH)]] | None = None
    """table: reshape each row into an image ``[C, H, W]`` (or ``[H, W]``: one channel) or a clip ``[C, T, H, W]``,
    e.g. ``[1, 8, 8]`` for the sklearn digits, ``[1, 28, 28]`` for MNIST as CSV; the product must equal the number
    of kept columns (choose them with ``data.columns``, e.g. ``"1:"``). The values must then lie in [0, 1]: set
    ``scale`` (e.g. 16 or 255) or ``normalize: minmax``."""
    scale: float | None = Field(None, gt=0.0)
    """table: divide every value by this number before normalisation (255 for 8-bit pixels, 16 for the sklearn
    digits); kept in ``data_meta.json`` as ``scale``. None: values as read."""

    # webdataset / hf
    shards: ShardsConfig = Field(default_factory=ShardsConfig)
    """webdataset: which members hold x and y; validation shards."""
    hf: HFConfig = Field(default_factory=HFConfig)
    """hf: the split and the columns of a Hugging Face dataset."""

    @field_validator("split")
    @classmethod
    def _split_fractions(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        if len(v) != 3 or any(f < 0 for f in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError("must be three fractions [train, val, test], each >= 0, summing to 1 (a train share of 0 "
                             "is for evaluation only, e.g. [0, 0, 1] evaluates on everything)")
        return v

    @field_validator("columns", mode="before")
    @classmethod
    def _one_column_spec(cls, v: Any) -> Any:
        # ``data.columns="1:"`` on the command line: one range or pattern is a list of one
        return [v] if isinstance(v, str | int) and not isinstance(v, bool) else v

    @field_validator("shape")
    @classmethod
    def _shape_rank(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and len(v) not in (2, 3, 4):
            raise ValueError("must be [H, W], [C, H, W] (an image) or [C, T, H, W] (a clip)")
        return v

    @model_validator(mode="after")
    def _channels_for_source(self) -> DataConfig:
        if self.channels is not None:
            ok = (1, 2) if self.source == "audio_folder" else (1, 3)
            if self.source in ("webdataset", "hf"):  # images, video or audio: checked by the source
                ok = (1, 2, 3)
            if self.channels not in ok:
                raise ValueError(f"data.channels: must be {ok[0]} or {ok[1]} for data.source={self.source}")
        return self


# -------------------------------------------------------------------------------------- bottleneck
class BottleneckConfig(Section):
    """The latent between encoder and decoder (``model.bottleneck``): a Gaussian posterior or a quantiser from
    ``vector-quantize-pytorch``. Quantiser terms are in the units of the reconstruction NLL (summed over a
    sample's elements): see ``vaekit.models.bottleneck``."""

    kind: Literal["gaussian", "vq", "rvq", "fsq", "lfq"] = "gaussian"
    """gaussian: mean/log-variance and the reparameterisation (KL to N(0, I)); vq: vector quantisation (VQ-VAE);
    rvq: residual VQ (``num_quantizers`` codebooks in sequence); fsq: finite scalar quantisation (``levels``);
    lfq: lookup-free quantisation (MAGVIT-2; ``codebook_size`` = 2^bits). Quantised kinds have no KL term."""
    codebook_size: int = Field(512, ge=2, le=2**24)
    """vq/rvq: codes per codebook; lfq: codebook size, a power of 2 (bits per position = log2 of it). fsq ignores
    it (its size is ``prod(levels)``)."""
    codebook_dim: int | None = Field(None, ge=1, le=MAX_WIDTH)
    """vq/rvq: dimension of a code; a value other than the latent channels adds linear projections in and out.
    None: the latent channels (``model.latent_dim``)."""
    codebook: Literal["ema", "learned"] = "ema"
    """vq/rvq: ema: each code follows an exponential moving average of the vectors assigned to it (no codebook
    loss); learned: codes are parameters trained by the ``codebook`` loss ``Σ (sg(h) − z_q)²``."""
    decay: float = Field(0.99, gt=0.0, lt=1.0)
    """vq/rvq with ``codebook: ema``: the moving average's decay."""
    commitment_weight: float = Field(0.25, ge=0.0)
    """Weight of the ``commit`` term ``Σ (h − sg(z_q))²`` (VQ-VAE's β; vq/rvq/lfq)."""
    num_quantizers: int = Field(2, ge=1, le=64)
    """rvq: codebooks applied in sequence, each to the residual of the previous ones."""
    levels: list[int] = Field(default_factory=lambda: [8, 5, 5, 5])
    """fsq: quantisation levels per code dimension (codebook size = their product; [8, 5, 5, 5] = 1000 codes,
    [8, 8, 8, 5, 5, 5] = 64000). Each level >= 3 (the library needs a symmetric variant for 2)."""
    entropy_weight: float = Field(0.1, ge=0.0)
    """lfq: weight of the ``entropy`` term (per-position entropy − γ·batch entropy, nats summed over positions)."""
    diversity_gamma: float = Field(1.0, ge=0.0)
    """lfq: γ, the weight of the batch (codebook) entropy inside the ``entropy`` term."""
    kmeans_init: bool = False
    """vq/rvq: initialise the codebook by k-means on the first training batch."""
    threshold_ema_dead_code: float = Field(0.0, ge=0.0)
    """vq/rvq: re-initialise a code from a vector of the current batch when its EMA usage count falls below this
    (e.g. 2; 0: never). The library's dead-code replacement."""

    @field_validator("levels")
    @classmethod
    def _fsq_levels(cls, v: list[int]) -> list[int]:
        if not 1 <= len(v) <= 16 or any(level < 3 or level > 2**16 for level in v):
            raise ValueError("must be 1-16 levels, each from 3 to 65536 (e.g. [8, 5, 5, 5]); the library refuses "
                             "level 2 without its symmetric variant")
        return v

    @model_validator(mode="after")
    def _kind_settings(self) -> BottleneckConfig:
        if self.kind == "lfq" and self.codebook_size & (self.codebook_size - 1):
            up = 1 << (self.codebook_size - 1).bit_length()
            raise ValueError(f"model.bottleneck.codebook_size: lfq needs a power of 2 (bits = log2 of it); "
                             f"got {self.codebook_size}, try {up}")
        if self.kind == "lfq" and self.codebook_size > 2**16:
            raise ValueError("model.bottleneck.codebook_size: lfq computes its entropy over every code; use at "
                             "most 65536 (16 bits per position)")
        return self

    @property
    def quantized(self) -> bool:
        """Whether this is a quantised latent (no posterior variance, no KL)."""
        return self.kind != "gaussian"

    def as_spec(self) -> dict[str, Any] | None:
        """The kind's own settings as constructor kwargs of ``QuantizedBottleneck`` (None for gaussian)."""
        if not self.quantized:
            return None
        keys = {"vq": ("codebook_size", "codebook_dim", "codebook", "decay", "commitment_weight", "kmeans_init",
                       "threshold_ema_dead_code"),
                "fsq": ("levels",),
                "lfq": ("codebook_size", "commitment_weight", "entropy_weight", "diversity_gamma")}
        names = keys["vq"] + ("num_quantizers",) if self.kind == "rvq" else keys[self.kind]
        return {"kind": self.kind, **{k: getattr(self, k) for k in names}}


class ResNetConfig(Section):
    """``model.arch=resnet`` settings (``model.resnet``); the channels per stage are ``model.hidden_dims`` and the
    latent channels ``model.latent_dim``. GroupNorm (32 groups) + SiLU throughout, as Stable Diffusion's VAE."""

    layers_per_block: int = Field(2, ge=1, le=16)
    """ResNet blocks per encoder stage (the decoder has one more per stage, as diffusers' ``Decoder``)."""
    mid_attention: bool = True
    """Self-attention in the mid block (between two ResNet blocks) of encoder and decoder."""
    attention_stages: list[int] = Field(default_factory=list)
    """0-based stage indices (of ``model.hidden_dims``) whose ResNet blocks are each followed by self-attention,
    in the encoder and the mirrored decoder stage. Attention is over all positions (causal video: per frame)."""
    downsample: Literal["conv", "interpolate"] = "conv"
    """conv: a stride-2 3x3 conv (SD); interpolate: 2x average pooling then a 3x3 conv. Up-sampling is always
    nearest-neighbour interpolation then a 3x3 conv (SD)."""
    causal: bool = False
    """Video only: causal in time (past-only temporal padding, per-frame GroupNorm and attention): the first frame
    is encoded on its own, a clip of 1 + 2^k·m frames maps to 1 + m latent frames (k = ``model.temporal_downsample``;
    1 + 4m frames with k = 2) and a single image is a valid 1-frame video."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout inside each ResNet block (between its two convs)."""

    @field_validator("attention_stages")
    @classmethod
    def _stages(cls, v: list[int]) -> list[int]:
        if any(i < 0 for i in v) or len(set(v)) != len(v):
            raise ValueError("must be distinct 0-based stage indices")
        return v


# ------------------------------------------------------------------------------------------- model
# research priors and the two-layer model (issue 15)
class PriorConfig(Section):
    """The prior p(z): the standard normal, or a VampPrior (Tomczak & Welling 2018)."""

    kind: Literal["normal", "vampprior"] = "normal"
    """normal: N(0, I), KL in closed form; vampprior: p(z) = 1/K Σ_k q(z | u_k) with K learned pseudo-inputs u_k;
    the KL is then a one-sample Monte-Carlo estimate log q(z|x) − log p(z) (logged as ``kl``)."""
    pseudo_inputs: int = Field(500, ge=1, le=100000)
    """K, the number of pseudo-inputs (must not exceed the training samples)."""


class TopLayerConfig(Section):
    """arch=hvae: the second stochastic layer (z1 → z2) of the two-layer VAE (IWAE paper's second architecture)."""

    latent_dim: int = Field(50, ge=1, le=2**20)
    """Size of the top latent z2 (the IWAE paper: 50; z1 is ``model.latent_dim``, the paper's 100)."""
    hidden_dims: list[int] = Field(default_factory=lambda: [100, 100])
    """Hidden widths of q(z2|z1) and p(z1|z2) (the paper: two layers of 100)."""


class ModelConfig(Section):
    arch: Literal["conv", "mlp", "resnet", "custom", "diffusers", "hvae"] = "conv"
    """conv: convolutional VAE, 1D/2D/3D chosen from the data (audio/images/video); mlp: flat inputs;
    resnet: Stable-Diffusion-style autoencoder (ResNet blocks, attention, spatial latent; 1D/2D/3D, causal video:
    ``model.resnet``; its latent is always spatial and it always uses GroupNorm + SiLU, so ``model.latent``,
    ``norm``, ``activation`` and ``dropout`` are conv/mlp keys); custom: a module passed to
    ``vaekit.train(model=...)`` (set automatically); diffusers: a diffusers autoencoder, pretrained
    (``model.pretrained``) or from a config (``model.diffusers_config``); hvae: a two-stochastic-layer MLP VAE
    (x → z1 → z2, ``model.top``)."""
    pretrained: str | None = None
    """arch=diffusers: a local folder written by ``save_pretrained`` (loads offline) or a Hugging Face hub id
    (e.g. ``stabilityai/sd-vae-ft-mse``; downloaded where the hub is reachable)."""
    class_name: str = Field("AutoencoderKL", validation_alias=AliasChoices("class", "class_name"))
    """arch=diffusers: the diffusers class (YAML key ``class``): AutoencoderKL, AutoencoderKLCogVideoX,
    AutoencoderKLLTXVideo, AutoencoderKLWan, AutoencoderKLMochi, AutoencoderKLHunyuanVideo, AutoencoderOobleck..."""
    subfolder: str | None = None
    """arch=diffusers: the folder inside ``pretrained`` that holds the VAE (``vae`` in a pipeline repository)."""
    variant: str | None = None
    """arch=diffusers: the weights variant to load (e.g. ``fp16``: ``diffusion_pytorch_model.fp16.safetensors``)."""
    revision: str | None = None
    """arch=diffusers: a hub revision (branch, tag or commit)."""
    torch_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """arch=diffusers: the dtype the weights are held (and trained) in. Keep float32 master weights and use
    ``train.precision=bf16`` for mixed precision."""
    latent_dim: int = Field(10, ge=1, le=2**20)
    """Vector latent size, or channels per position with ``latent: spatial``."""
    latent: Literal["vector", "spatial"] = "vector"
    """vector: a flat z (classic VAE); spatial: a fully-convolutional z map (LDM-style, any input size)."""
    hidden_dims: list[int] = Field(default_factory=lambda: [32, 32, 64, 64])
    """Channels per down-sampling stage (conv), per stage (resnet: ``len − 1`` 2x down-samplings between them) or
    hidden layer widths (mlp)."""
    norm: Literal["batch", "group", "none"] = "batch"
    """After each conv / hidden layer (group: GroupNorm with up to 32 groups for conv, LayerNorm for mlp)."""
    activation: Literal["relu", "leaky_relu", "silu", "gelu", "elu"] = "relu"
    """Activation after each stage (leaky_relu has slope 0.2)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout after each stage's activation."""
    temporal_downsample: int = Field(0, ge=0)
    """Video: how many of the down-sampling stages also halve time (the rest keep T)."""
    gaussian_logvar: Literal["scalar", "pixel"] = "scalar"
    """With ``loss.recon: gaussian``: one learned log-variance, or one per output element (decoder head)."""
    grad_checkpointing: bool = False
    """Recompute activations in the backward instead of keeping them (built-in blocks; a user module's
    ``encoder``/``decoder`` children; a diffusers model's own switch)."""
    leaky_slope: float = Field(0.2, ge=0.0, lt=1.0)
    """``activation: leaky_relu``: the negative slope (PyTorch's own default is 0.01)."""
    output_activation: Literal["none", "tanh", "sigmoid"] = "none"
    """Built-in models: the decoder's mean passes through tanh (data in [-1, 1]) or a sigmoid (data in [0, 1]).
    For mse, l1 and gaussian; bce already maps its logits through a sigmoid."""
    prior: PriorConfig = Field(default_factory=PriorConfig)
    """The prior p(z) (normal or vampprior; built-in families)."""
    top: TopLayerConfig = Field(default_factory=TopLayerConfig)
    """arch=hvae: the second stochastic layer."""
    bottleneck: BottleneckConfig = Field(default_factory=BottleneckConfig)
    """The latent: Gaussian (default) or quantised (vq, rvq, fsq, lfq); for mlp, conv and resnet."""
    resnet: ResNetConfig = Field(default_factory=ResNetConfig)
    """arch=resnet: blocks per stage, attention, down-sampling, causal video."""
    diffusers_config: str | dict[str, Any] | None = None
    """arch=diffusers without ``model.pretrained``: the constructor arguments of ``model.class`` (a JSON file
    path, e.g. a ``config.json``, or a mapping), built with random weights to train from scratch."""

    @model_validator(mode="after")
    def _pretrained_source(self) -> ModelConfig:
        if self.arch == "diffusers" and not self.pretrained and self.diffusers_config is None:
            raise ValueError(
                "model.pretrained: required with model.arch=diffusers (a save_pretrained folder or a hub id), "
                "unless model.diffusers_config gives constructor arguments to train from scratch"
            )
        if self.arch == "diffusers" and self.pretrained and self.diffusers_config is not None:
            raise ValueError("model.diffusers_config: give either model.pretrained or model.diffusers_config, "
                             "not both")
        if self.arch == "diffusers" and not re.fullmatch(r"Autoencoder\w*|\w*VAE\w*|VQModel", self.class_name):
            raise ValueError(f"model.class: {self.class_name!r} is not a diffusers autoencoder class name")
        return self

    @model_validator(mode="after")
    def _family_keys(self) -> ModelConfig:
        quantizable = ("mlp", "conv", "resnet")
        if self.bottleneck.quantized and self.arch not in quantizable:
            raise ValueError(f"model.bottleneck.kind: {self.bottleneck.kind} applies to model.arch "
                             f"{', '.join(quantizable)}; model.arch={self.arch} has its own latent (use gaussian)")
        if self.bottleneck.quantized and self.prior.kind != "normal":
            raise ValueError(f"model.prior.kind: {self.prior.kind} is a prior over a Gaussian latent; "
                             f"model.bottleneck.kind={self.bottleneck.kind} is quantised (use model.prior.kind=normal)")
        if self.arch == "resnet":
            n = len(self.hidden_dims)
            bad = [i for i in self.resnet.attention_stages if i >= n]
            if bad:
                raise ValueError(f"model.resnet.attention_stages: stage {bad[0]} does not exist; model.hidden_dims "
                                 f"has {n} stages (0..{n - 1})")
            if self.temporal_downsample > n - 1:
                raise ValueError(f"model.temporal_downsample: {self.temporal_downsample} exceeds the {n - 1} "
                                 f"down-sampling stages of model.hidden_dims={self.hidden_dims} (resnet down-samples "
                                 "between stages)")
        return self

    @field_validator("hidden_dims")
    @classmethod
    def _nonempty(cls, v: list[int]) -> list[int]:
        if not v or any(d < 1 for d in v):
            raise ValueError("must be a non-empty list of positive integers")
        if any(d > MAX_WIDTH for d in v):
            raise ValueError(f"each entry must be at most {MAX_WIDTH}")
        if len(v) > 64:
            raise ValueError("at most 64 stages/layers")
        return v


# ------------------------------------------------------------------------------------------ loss
class KLConfig(Section):
    schedule: Literal["constant", "linear", "cyclical", "capacity"] = "constant"
    """constant: β; linear: 0→β over warmup_steps; cyclical: linear ramps repeated every cycle_steps
    (ramp over ``ratio`` of each cycle); capacity: γ·|KL − C(step)|, C rising linearly to capacity_max."""
    warmup_steps: int = Field(0, ge=0)
    """linear: steps from 0 to β."""
    cycle_steps: int = Field(1000, ge=1)
    """cyclical: cycle length in optimizer steps."""
    ratio: float = Field(0.5, gt=0.0, le=1.0)
    """cyclical: fraction of each cycle spent ramping from 0 to β."""
    capacity_max: float = Field(25.0, ge=0.0)
    """nats."""
    capacity_steps: int = Field(10000, ge=1)
    """capacity: steps for the target C to reach ``capacity_max``."""
    gamma: float = Field(1000.0, ge=0.0)
    """capacity: weight γ of |KL − C|."""
    free_bits: float = Field(0.0, ge=0.0, le=1e4)
    """Minimum KL per latent dimension in nats (batch mean), Kingma et al. 2016."""


class DenoiseConfig(Section):
    noise_std: float = Field(0.0, ge=0.0)
    """Gaussian noise added to training inputs (targets stay clean)."""
    mask_rate: float = Field(0.0, ge=0.0, lt=1.0)
    """Fraction of input elements zeroed during training."""
    rescale: bool = False
    """Scale the kept input elements by ``1 / (1 - mask_rate)``, as ``nn.Dropout`` on the input does (a
    Lightning model's input dropout). False: zeroed only, the rest unchanged."""


class PerceptualConfig(Section):
    kind: Literal["none", "vgg", "lpips"] = "none"
    """Perceptual term: none, vgg (VGG16 feature MSE) or lpips."""
    net: Literal["vgg", "alex", "squeeze"] = "vgg"
    """LPIPS backbone."""
    weight: float = Field(1.0, ge=0.0)
    """Weight of the perceptual term (it is also scaled by the number of elements per sample)."""
    frames: int = Field(4, ge=1)
    """Video: frames sampled per clip for the perceptual term."""
    weights_path: str | None = None
    """Local file with the backbone's pretrained weights (else the torch hub cache)."""
    pretrained: bool = True
    """False: random backbone (tests only; the loss is then meaningless)."""


class SpectralConfig(Section):
    weight: float = Field(0.0, ge=0.0)
    """Multi-resolution STFT term (audio): ``weight·MRSTFT`` per clip (a mean over frequency bins and frames, as
    a mean-reduced trainer's λ); 1 is a sensible start (the audio preset); 0 disables it."""
    fft_sizes: list[int] = Field(default_factory=lambda: [1024, 2048, 512])
    """FFT size per resolution (fft_sizes, hop_sizes and win_lengths must have equal lengths)."""
    hop_sizes: list[int] = Field(default_factory=lambda: [120, 240, 50])
    """Hop size per resolution."""
    win_lengths: list[int] = Field(default_factory=lambda: [600, 1200, 240])
    """Window length per resolution, each at most its FFT size."""
    w_sc: float = 1.0
    """Spectral-convergence weight."""
    w_log_mag: float = 1.0
    """Log-magnitude L1 weight."""
    w_lin_mag: float = 0.0
    """Linear-magnitude L1 weight."""

    @model_validator(mode="after")
    def _same_lengths(self) -> SpectralConfig:
        if not (len(self.fft_sizes) == len(self.hop_sizes) == len(self.win_lengths)):
            raise ValueError("fft_sizes, hop_sizes and win_lengths must have the same length")
        return self


class DiscriminatorConfig(Section):
    channels: int = Field(64, ge=1)
    """Width of the first PatchGAN layer (doubling up to 8×)."""
    layers: int = Field(3, ge=1)
    """Stride-2 convolutions; too many for small inputs is an error."""
    norm: Literal["batch", "group", "none"] = "batch"
    """Discriminator normalisation."""


class AdversarialConfig(Section):
    weight: float = Field(0.0, ge=0.0)
    """0 disables the discriminator entirely."""
    loss: Literal["hinge", "non_saturating"] = "hinge"
    """GAN loss for both players."""
    start_step: int = Field(0, ge=0)
    """Gates both the generator's adversarial term and the discriminator's updates."""
    adaptive: bool = True
    """Scale the generator term by ‖∇nll‖/‖∇g‖ at the decoder's last layer (latent-diffusion)."""
    adaptive_eps: float = 1e-4
    """Denominator epsilon of the adaptive weight."""
    adaptive_max: float = 1e4
    """Upper clamp of the adaptive weight."""
    r1_weight: float = Field(0.0, ge=0.0)
    """R1 penalty on real data; 0 disables it."""
    r1_every: int = Field(1, ge=1)
    """Compute R1 every N steps (scaled by N: lazy regularisation)."""
    feature_matching: float = Field(0.0, ge=0.0)
    """Weight of the discriminator feature-matching L1."""
    disc_weight: float = Field(1.0, ge=0.0)
    """Weight of the discriminator's own loss."""
    discriminator: DiscriminatorConfig = Field(default_factory=DiscriminatorConfig)
    """The PatchGAN discriminator's size (1D/2D/3D to match the data)."""


# ------------------------------------------------------------------------------- research variants
Variant = Literal["elbo", "beta_tcvae", "factor_vae", "dip_vae_i", "dip_vae_ii", "iwae", "miwae"]


class TCConfig(Section):
    """β-TCVAE (Chen et al. 2018): the KL split into index-code MI, total correlation and dimension-wise KL."""

    alpha: float = Field(1.0, ge=0.0)
    """Weight of the index-code mutual information I(x; z)."""
    beta: float = Field(6.0, ge=0.0)
    """Weight of the total correlation TC(z) (the paper's β)."""
    gamma: float = Field(1.0, ge=0.0)
    """Weight of the dimension-wise KL Σ_d KL(q(z_d) || p(z_d))."""
    estimator: Literal["mws", "mss"] = "mss"
    """How log q(z) is estimated from the minibatch: minibatch-weighted sampling (mws) or minibatch-stratified
    sampling (mss), the paper's two estimators; both need the training set size (read from the data)."""


class FactorConfig(Section):
    """FactorVAE (Kim & Mnih 2018): a latent discriminator estimates TC(z) by the density-ratio trick."""

    gamma: float = Field(10.0, ge=0.0)
    """Weight of the TC estimate E[log D(z) / (1 − D(z))] in the autoencoder's loss."""
    hidden: int = Field(1000, ge=1, le=MAX_WIDTH)
    """Width of each hidden layer of the latent discriminator (the paper: 1000)."""
    layers: int = Field(6, ge=1, le=64)
    """Hidden layers of the latent discriminator (the paper: 6, LeakyReLU 0.2)."""


class DIPConfig(Section):
    """DIP-VAE (Kumar et al. 2018): moments of the aggregate posterior pushed towards the prior's identity."""

    lambda_od: float = Field(10.0, ge=0.0)
    """Weight of the squared off-diagonal entries of the covariance."""
    lambda_d: float | None = Field(None, ge=0.0)
    """Weight of the squared (diagonal − 1) entries. None: 10·lambda_od for dip_vae_i, lambda_od for dip_vae_ii
    (the paper's settings)."""


class IWConfig(Section):
    """IWAE (Burda et al. 2016) and MIWAE (Rainforth et al. 2018) bounds with k·m posterior samples per input."""

    k: int = Field(5, ge=1, le=100000)
    """Importance samples inside each log-mean-exp."""
    m: int = Field(1, ge=1, le=100000)
    """miwae: independent bounds averaged (the k×M layout: m groups of k samples); iwae uses m=1."""
    memory_limit_mb: float | None = Field(None, gt=0.0)
    """Refuse a run whose k·m-sample decoder activations are estimated above this (MiB) before training.
    None: the free GPU memory, or the available RAM on CPU."""



ReconKind = Literal["mse", "l1", "bce", "gaussian"]


class LossConfig(Section):
    recon: ReconKind = "bce"
    """mse/l1: summed error; bce: Bernoulli on logits (binary or multi-hot targets); gaussian: learned variance."""
    recon_weight: float = Field(1.0, ge=0.0)
    """Weight of the reconstruction NLL."""
    beta: float = Field(1.0, ge=0.0)
    """KL weight β (the final weight of the linear/cyclical schedules)."""
    reduction: Literal["sum", "mean"] = "sum"
    """How the reconstruction enters the loss. sum: summed over a sample's N elements (nats per sample, the
    ELBO); the perceptual distance is then added to each element (×N). mean: averaged over them, as
    ``F.mse_loss(recon, x)`` in a mean-reduced script, so its ``kld_weight`` is this ``beta`` unchanged (in sum
    units: ``beta = kld_weight·N``). The spectral term is ``spectral.weight·MRSTFT`` in both. The logged ``recon``
    stays the summed NLL either way."""
    kl: KLConfig = Field(default_factory=KLConfig)
    """KL schedule and free bits."""
    denoise: DenoiseConfig = Field(default_factory=DenoiseConfig)
    """Input corruption for denoising training (targets stay clean)."""
    perceptual: PerceptualConfig = Field(default_factory=PerceptualConfig)
    """Perceptual term (images and video)."""
    spectral: SpectralConfig = Field(default_factory=SpectralConfig)
    """Multi-resolution STFT term (audio)."""
    adversarial: AdversarialConfig = Field(default_factory=AdversarialConfig)
    """PatchGAN adversarial term and its discriminator."""
    variant: Variant = "elbo"
    """The objective: elbo (β-VAE with ``kl``), beta_tcvae (``tc``), factor_vae (``factor`` and ``factor_optim``),
    dip_vae_i / dip_vae_ii (``dip``), iwae / miwae (``iw``). Variants other than elbo replace the KL term."""
    tc: TCConfig = Field(default_factory=TCConfig)
    """beta_tcvae weights and estimator."""
    factor: FactorConfig = Field(default_factory=FactorConfig)
    """factor_vae: the TC weight and the latent discriminator."""
    dip: DIPConfig = Field(default_factory=DIPConfig)
    """dip_vae_i / dip_vae_ii weights."""
    iw: IWConfig = Field(default_factory=IWConfig)
    """iwae / miwae: samples and the memory limit."""

    @model_validator(mode="after")
    def _variant_fits(self) -> LossConfig:
        if self.variant == "elbo":
            return self
        if self.adversarial.weight > 0:
            raise ValueError(f"loss.variant={self.variant}: not combined with loss.adversarial.weight > 0 (use elbo)")
        if self.kl.schedule == "capacity" or self.kl.free_bits > 0:
            raise ValueError(f"loss.variant={self.variant}: kl.schedule=capacity and kl.free_bits apply to elbo only")
        if self.variant == "iwae" and self.iw.m != 1:
            raise ValueError("loss.iw.m: iwae uses one bound (m=1); use loss.variant=miwae for m > 1")
        return self


# ----------------------------------------------------------------------------------------- optim
OptimName = Literal["adam", "adamw", "sgd", "rmsprop"]
SchedulerName = Literal["none", "cosine", "cosine_restarts", "step", "exponential", "plateau"]


class SchedulerConfig(Section):
    name: SchedulerName = "none"
    """Learning-rate schedule, stepped once per optimizer step; plateau steps on the validation loss; cosine spans
    the stage's length."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up from lr·warmup_start_factor to lr over this many optimizer steps."""
    warmup_start_factor: float = Field(0.01, gt=0.0, le=1.0)
    """The warm-up starts at lr × this factor."""
    min_lr: float = Field(0.0, ge=0.0)
    """cosine / cosine_restarts floor."""
    t_0: int = Field(1000, ge=1)
    """cosine_restarts: steps of the first cycle."""
    t_mult: int = Field(1, ge=1)
    """cosine_restarts: cycle length multiplier."""
    step_size: int = Field(1000, ge=1)
    """step: decay every this many optimizer steps."""
    gamma: float = Field(0.5, gt=0.0, le=1.0)
    """step/exponential: decay factor (exponential: per optimizer step)."""
    factor: float = Field(0.5, gt=0.0, lt=1.0)
    """plateau: lr ×factor after ``patience`` validations without improvement of the validation total."""
    patience: int = Field(3, ge=0)
    """plateau: validations without improvement before the lr is lowered."""


class OptimConfig(Section):
    name: OptimName = "adam"
    """Optimizer."""
    lr: float = Field(1e-3, gt=0.0)
    """Learning rate."""
    weight_decay: float = Field(0.0, ge=0.0)
    """Weight decay (decoupled for adamw)."""
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    """Adam/AdamW moment decay rates, each in [0, 1)."""
    momentum: float = Field(0.0, ge=0.0)
    """SGD / RMSprop momentum (sgd with non-default betas is an error: use momentum)."""
    eps: float = Field(1e-8, gt=0.0)
    """Optimizer epsilon."""
    grad_clip: float | None = Field(None, gt=0.0)
    """Clip the global gradient norm to this value (None: no clipping; the norm is still logged)."""
    group_lr: dict[str, Annotated[float, Field(gt=0.0)]] = Field(default_factory=dict)
    """Per-module-group learning rates, e.g. ``{encoder: 1e-4}`` (groups: encoder, decoder)."""
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    """Learning-rate schedule (restarts with each stage)."""


# ----------------------------------------------------------------------------------------- train
class EMAConfig(Section):
    enabled: bool = False
    """Keep an EMA of the autoencoder's weights (used for validation, sample grids and export)."""
    decay: float = Field(0.999, gt=0.0, lt=1.0)
    """EMA decay: ``shadow = decay·shadow + (1 − decay)·θ``."""
    start_step: int = Field(0, ge=0)
    """The EMA is reset to the current weights when this step is reached, then averaged (0: from the initial
    weights)."""
    every: int = Field(1, ge=1)
    """Update the EMA every N optimizer steps."""


class TrainConfig(Section):
    epochs: int = Field(3, ge=0)
    """Epochs (the default run, 3 epochs of the procedural shapes, takes a few minutes on 2 CPU cores)."""
    max_steps: int | None = Field(None, ge=0)
    """Stop after this many optimizer steps (wins over epochs when both are set)."""
    batch_size: int = Field(64, ge=1, le=2**20)
    """Global batch per forward pass, summed over processes (each of N processes gets batch_size/N)."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step (effective batch ``batch_size × grad_accum``)."""
    precision: Literal["no", "fp16", "bf16"] = "no"
    """Mixed precision (Accelerate autocast; fp16 uses a checkpointed grad scaler and needs CUDA); the same in
    every stage."""
    drop_last: bool = True
    """Drop the last partial training batch of each epoch."""
    val_every: int | None = Field(None, ge=1)
    """Validate every N optimizer steps. Default: at the end of every epoch."""
    val_batches: int | None = Field(None, ge=1)
    """Limit validation to this many batches."""
    limit_batches: int | None = Field(None, ge=1)
    """Train on at most this many batches per epoch (Lightning's ``limit_train_batches`` as a count): a quick
    test of a long pipeline. None: every batch."""
    ckpt_every: int | None = Field(None, ge=1)
    """Checkpoint every N optimizer steps (also at every epoch end and at the end of the run)."""
    keep_last: int = Field(2, ge=1)
    """How many checkpoints are kept."""
    nan_policy: Literal["stop", "skip"] = "stop"
    """A non-finite loss: stop (naming step and term, last checkpoint kept) or skip the batch (counted)."""
    nan_skip_limit: float = Field(0.5, gt=0.0, le=1.0)
    """With ``nan_policy: skip``: stop (exit 3) once more than this fraction of the steps were skipped."""
    timeout_s: float = Field(300.0, gt=0.0, le=86400.0)
    """Collective timeout between processes: a rank that stops responding fails the others after this long."""
    ema: EMAConfig = Field(default_factory=EMAConfig)
    """Exponential moving average of the autoencoder's weights."""
    compile: bool = False
    """torch.compile the autoencoder (CUDA)."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """Several processes: ddp replicates the model; fsdp shards parameters, gradients and optimizer state
    (FSDP2; through Accelerate on GPUs, torch's ``fully_shard`` on CPU). Checkpoints hold full weights either way."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms (slower on GPU)."""
    device: Literal["auto", "cpu"] = "auto"
    """auto: the accelerator Accelerate finds (CUDA, MPS), else the CPU; cpu: the CPU even when a GPU is there.
    Pick one GPU of several with ``CUDA_VISIBLE_DEVICES``. From Python: ``vaekit.train(..., device="cpu")``."""

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_off(cls, v: Any) -> Any:
        # YAML reads ``no`` (and ``false``, ``off``) as false: each means full precision, as ``"no"`` does
        return "no" if v is False else v


# ------------------------------------------------------------------------------------------- log
class LogConfig(Section):
    every: int = Field(50, ge=1)
    """Log training metrics every N optimizer steps."""
    progress: bool = True
    """tqdm progress bar on stderr."""
    tensorboard: bool = True
    """Write ``tensorboard/``."""
    jsonl: bool = True
    """Write ``metrics.jsonl``."""
    samples: bool = True
    """Write input/reconstruction grids and prior samples at each validation."""
    num_samples: int = Field(16, ge=1, le=1024)
    """Images (or clips) per sample grid."""
    keep_samples: int | None = Field(10, ge=1)
    """Sample files (grids, wav, mp4) of only the last N validations of each stage are kept under ``samples/``;
    older ones are deleted as new ones are written, so a long run does not pile up hundreds of images.
    None: keep every validation's samples."""
    plots: bool = True
    """Write ``curves.png`` at the end."""
    wandb: bool = False
    """Log to Weights & Biases (``pip install vaekit[wandb]``); the run id is kept in ``trackers.json``."""
    wandb_project: str | None = None
    """W&B project (default: ``WANDB_PROJECT`` or ``vaekit``)."""
    wandb_mode: Literal["online", "offline", "disabled"] | None = None
    """W&B mode (default: ``WANDB_MODE``, else online). offline writes under ``{run_dir}/wandb``."""
    mlflow: bool = False
    """Log to MLflow (``pip install vaekit[mlflow]``); the run id is kept in ``trackers.json``."""
    mlflow_uri: str | None = None
    """MLflow tracking URI (default: ``MLFLOW_TRACKING_URI``, else ``sqlite:///{run_dir}/mlflow.db`` with artifacts
    in ``{run_dir}/mlartifacts``; MLflow 3 refuses a ``file:`` store unless ``MLFLOW_ALLOW_FILE_STORE=true``)."""
    mlflow_experiment: str = "vaekit"
    """MLflow experiment name."""


# -------------------------------------------------------------------------------------- finetune
class FinetuneConfig(Section):
    """What of the autoencoder trains in a stage (overridable per stage: ``stages[i].finetune``)."""

    mode: Literal["full", "lora", "decoder"] = "full"
    """full: every (unfrozen) weight; lora: low-rank adapters (peft) on ``target_modules``, the base frozen;
    decoder: only the decoder side (``decoder`` and ``post_quant_conv``). A stage that leaves lora merges the
    adapters into the base weights first (LoRA warm-up, then full finetune from the merged model)."""
    rank: int = Field(8, ge=1, le=4096)
    """LoRA rank r."""
    alpha: float = Field(8.0, gt=0.0)
    """LoRA scaling numerator: the update is ``alpha / rank · B·A``."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the LoRA branch's input."""
    target_modules: list[str] | None = None
    """Module names (or name suffixes, e.g. ``[to_q, to_k, to_v, conv1, conv2]``) that get adapters.
    None: every Linear and Conv1d/2d/3d layer of the autoencoder (its convolutions and attention projections)."""


# ------------------------------------------------------------------------------------------ eval
class EvalConfig(Section):
    metrics: list[str] = Field(default_factory=list)
    """Evaluation metrics run with validation (``vaekit eval`` names: psnr, ssim, iwae, tags, mig, ...); their
    values join the ``val`` record (``val/psnr``), so stage transitions can use them."""
    every: int | None = Field(None, ge=1)
    """Run them every N optimizer steps (at the next validation). Default: at every validation."""
    batches: int | None = Field(None, ge=1)
    """Validation batches they use. Default: ``train.val_batches``, else all."""
    k: int = Field(16, ge=1, le=4096)
    """Importance samples for ``iwae``."""


# ---------------------------------------------------------------------------------------- stages
class StageConfig(BaseModel):
    """One phase of a pipeline. It may override the sections ``data``, ``loss``, ``optim``, ``disc_optim``,
    ``train``, ``log`` and ``finetune``; the model (architecture) and the run are the same in every stage."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True)

    name: str
    """Unique; used in tags, sample file names and messages (letters, digits, ``-``, ``_``, ``.``)."""
    epochs: int | None = Field(None, ge=1)
    """Fixed length in epochs (set epochs or steps, not both)."""
    steps: int | None = Field(None, ge=1)
    """Fixed length in optimizer steps."""
    metric: str | None = None
    """End the stage when this smoothed metric crosses ``threshold`` (e.g. ``train/recon``)."""
    threshold: float | None = None
    """End when the smoothed ``metric`` crosses this value."""
    mode: Literal["below", "above"] = "below"
    """Direction of the threshold / improvement."""
    plateau_window: int | None = Field(None, ge=2)
    """End the stage when ``metric`` (smoothed) improved by less than ``plateau_threshold`` (relative) over the
    last this many OPTIMIZER STEPS (compared with its newest value at least that old)."""
    plateau_threshold: float | None = Field(None, gt=0.0)
    """Relative improvement for the plateau rule; default 1e-3 when unset."""
    max_epochs: int | None = Field(None, ge=1)
    """Safety limit (epochs) for a transition (``metric``)."""
    max_steps: int | None = Field(None, ge=1)
    """Safety limit (optimizer steps) for a transition (``metric``)."""
    freeze: list[str] = Field(default_factory=list)
    """Groups (encoder, decoder, discriminator) or submodule paths to freeze; accumulates across stages."""
    unfreeze: list[str] = Field(default_factory=list)
    """Groups or submodule paths to unfreeze again."""
    init_from: str | None = None
    """A run directory, checkpoint directory or ``.safetensors`` file loaded at the start of the stage (not on
    resume)."""
    data: dict[str, Any] = Field(default_factory=dict)
    """Overrides of the ``data`` section for this stage."""
    loss: dict[str, Any] = Field(default_factory=dict)
    """Overrides of the ``loss`` section for this stage."""
    optim: dict[str, Any] = Field(default_factory=dict)
    """Overrides of the ``optim`` section for this stage (fresh optimizers each stage)."""
    disc_optim: dict[str, Any] = Field(default_factory=dict)
    """Overrides of the ``disc_optim`` section for this stage."""
    train: dict[str, Any] = Field(default_factory=dict)
    """Overrides of the ``train`` section for this stage."""
    log: dict[str, Any] = Field(default_factory=dict)
    """Overrides of the ``log`` section for this stage."""
    eval: dict[str, Any] = Field(default_factory=dict)
    """Overrides of the ``eval`` section for this stage."""
    finetune: dict[str, Any] = Field(default_factory=dict)
    """Overrides of the ``finetune`` section for this stage."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return check_stage_name(v)

    @field_validator("*", mode="after")
    @classmethod
    def _int64(cls, v: Any) -> Any:
        _check_ints(v)
        return v


# ----------------------------------------------------------------------------------------- sweep
class SweepConfig(Section):
    """``vaekit sweep``: an Optuna study over config keys (command-line flags override these)."""

    trials: int = Field(8, ge=1, le=100000)
    """Trials in the study in total (a continued sweep runs only the missing ones)."""
    params: dict[str, str] = Field(default_factory=dict)
    """Config key → distribution: ``loguniform:LO:HI``, ``uniform:LO:HI``, ``int:LO:HI``, ``choice:A,B,C``."""
    metric: str = "val/loss"
    """The record to optimise (``split/term``, e.g. ``val/loss``); its last value in a trial is the trial's value."""
    direction: Literal["minimize", "maximize"] = "minimize"
    """Whether a lower or a higher metric is better."""
    jobs: int = Field(1, ge=1, le=1024)
    """Trials running at once (each a subprocess)."""
    nproc: int = Field(1, ge=1, le=1024)
    """Processes per trial (>1: launched with torchrun, data-parallel)."""
    pruner: Literal["median", "none"] = "median"
    """Stop a trial whose validation records fall below the median of earlier trials at the same step."""
    dir: str | None = None
    """The sweep's directory (study.db, one run directory per trial, the tables and plot). Default:
    ``{run.dir}/sweep-{run.name or 'study'}``."""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    """The sampler's seed."""


# ------------------------------------------------------------------------------------------- all
class VaekitConfig(Section):
    preset: str | list[str] | None = None
    """The preset(s) this config started from, applied in order at load time (a later one wins; the file and the
    overrides win over all): a name, ``"tags-small,beta-vae"`` or a list."""
    run: RunConfig = Field(default_factory=RunConfig)
    """The run directory and seed."""
    data: DataConfig = Field(default_factory=DataConfig)
    """The data source."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The autoencoder."""
    loss: LossConfig = Field(default_factory=LossConfig)
    """The objective."""
    optim: OptimConfig = Field(default_factory=OptimConfig)
    """The autoencoder's optimizer."""
    disc_optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=2e-4, betas=(0.5, 0.9)))
    """The discriminator's optimizer (used when ``loss.adversarial.weight > 0``)."""
    sweep: SweepConfig | None = None
    """``vaekit sweep``'s settings (ignored by ``vaekit train``)."""
    factor_optim: OptimConfig | None = None
    """loss.variant=factor_vae: the latent discriminator's optimizer (required then; the paper: adam, lr 1e-4,
    betas [0.5, 0.9])."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """Length, batch, precision, checkpoints and the distributed strategy."""
    log: LogConfig = Field(default_factory=LogConfig)
    """Logging, sample grids and trackers."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Evaluation metrics computed at validation time."""
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    """What trains of the autoencoder (full, LoRA, decoder)."""
    stage_defaults: dict[str, Any] = Field(default_factory=dict)
    """Stage keys (anything but ``name``) merged under every stage."""
    stages: list[StageConfig] = Field(default_factory=list)
    """At most ``MAX_STAGES``: each stage is validated as a whole config, and a run has a handful."""

    @field_validator("stages", mode="before")
    @classmethod
    def _few_stages(cls, v: Any) -> Any:
        if isinstance(v, list) and len(v) > MAX_STAGES:  # before validating thousands of items
            raise ValueError(f"at most {MAX_STAGES} stages (got {len(v)})")
        return v

    @model_validator(mode="after")
    def _diffusers_default_recon(self) -> VaekitConfig:
        # a diffusers decoder outputs samples, not logits: its default likelihood is mse, not the global bce
        if self.model.arch == "diffusers" and "recon" not in self.loss.model_fields_set:
            self.loss.recon = "mse"
        return self

    @model_validator(mode="after")
    def _research_settings(self) -> VaekitConfig:
        if self.loss.variant == "factor_vae" and self.factor_optim is None:
            raise ValueError(
                "factor_optim: required with loss.variant=factor_vae (the latent discriminator's own optimizer, "
                "e.g. factor_optim: {lr: 1.0e-4, betas: [0.5, 0.9]}; preset factor-vae sets it)"
            )
        loss = self.loss
        if loss.variant in ("iwae", "miwae"):
            # the importance-weighted bound is the whole loss: settings it cannot honour are refused, not ignored
            ignored = [key for key, on in (
                ("loss.reduction=mean", loss.reduction == "mean"),
                ("loss.recon_weight != 1", loss.recon_weight != 1.0),
                ("loss.perceptual.weight", loss.perceptual.kind != "none" and loss.perceptual.weight > 0),
                ("loss.spectral.weight", loss.spectral.weight > 0),
                ("loss.adversarial.weight", loss.adversarial.weight > 0),
                ("loss.kl.free_bits", loss.kl.free_bits > 0),
                ("loss.kl.schedule=capacity", loss.kl.schedule == "capacity"),
            ) if on]
            if ignored:
                raise ValueError(f"loss.variant={loss.variant}: the bound is the whole loss; remove {', '.join(ignored)}")
        elif loss.variant != "elbo" and (loss.kl.free_bits > 0 or loss.kl.schedule == "capacity"):
            raise ValueError(f"loss.variant={loss.variant}: loss.kl.free_bits and the capacity schedule apply to the plain "
                             "ELBO only (set loss.kl.free_bits=0 and a constant/linear/cyclical schedule)")
        if self.model.prior.kind == "vampprior" and self.model.arch in ("diffusers", "custom", "hvae"):
            raise ValueError(f"model.prior=vampprior: built for the mlp and conv families, not model.arch={self.model.arch}")
        own_prior = self.model.prior.kind == "vampprior" or self.model.arch == "hvae"
        what = "model.prior=vampprior" if self.model.prior.kind == "vampprior" else "model.arch=hvae"
        if own_prior and loss.variant not in ("elbo", "iwae", "miwae"):
            # the variants' regularisers are written for a factorised N(0, I) prior: the prior would not train
            raise ValueError(f"loss.variant={loss.variant}: not with {what} (its KL assumes N(0, I)); use "
                             "loss.variant elbo, iwae or miwae")
        if own_prior and loss.kl.free_bits > 0:
            raise ValueError(f"loss.kl.free_bits: not with {what} (its KL is a Monte-Carlo estimate, not per "
                             "dimension); set loss.kl.free_bits=0")
        if self.model.prior.kind == "vampprior" and self.model.norm == "batch":
            raise ValueError("model.norm=batch: not with model.prior=vampprior (the pseudo-inputs' pass would update "
                             "the batch statistics); use model.norm=group or none")
        if loss.variant in ("beta_tcvae", "factor_vae", "dip_vae_i", "dip_vae_ii", "iwae", "miwae") and \
                loss.adversarial.start_step != 0 and loss.adversarial.weight == 0:
            raise ValueError(f"loss.adversarial.start_step: has no meaning with loss.variant={loss.variant} and no "
                             "adversarial term (FactorVAE's discriminator trains from the start); remove it")
        if loss.variant == "beta_tcvae" and loss.beta != 1.0:
            raise ValueError("loss.beta: unused with loss.variant=beta_tcvae; its weights are loss.tc.alpha, "
                             "loss.tc.beta (the total correlation's β) and loss.tc.gamma")
        return self
