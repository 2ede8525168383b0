"""The words every part of Breedline shares, in one dependency-free module.

Why here: ``ml_scripts/`` ships to the SageMaker containers, so the training
and serving scripts can import this module as they run there
(``import contract``); the Lambda zip carries the same file at its root
(``breedline.build.lambda_app`` puts it there), and the local runtime, the
operator CLI and the benchmarks import it from the checkout. One definition
of each word, so the parts cannot drift apart:

- the data channels (one per split), the pretrained-weights and champion
  channels, and the job statuses that end a job;
- the training metrics: their names, the stdout line ``train.py`` prints for
  each (anchored, with a prefix no quoted file name can produce) and the
  ``MetricDefinitions`` regexes SageMaker parses them with;
- the hyperparameter codec: how values are quoted on the way into a job and
  unquoted on the way out of the tuner and into ``train.py``;
- the serving backends the model container accepts;
- the Debugger modes, the in-job rules, their metric lines and the files the
  final job writes about them.

Standard library only: this runs in the Lambda, in the containers (any
Python 3.11+) and on the operator's machine.
"""

from __future__ import annotations

import json
import re
from typing import Any

# -- data channels --------------------------------------------------------------------
#: The splits of a data set, which are also the training job's input channels
#: (``SM_CHANNEL_TRAIN`` ...), in the order they are created and listed.
CHANNELS: tuple[str, ...] = ("train", "valid", "test")
#: The optional input channel that carries one pretrained weights file
#: (``SM_CHANNEL_PRETRAINED``): not a data split, so not in :data:`CHANNELS`.
PRETRAINED_CHANNEL = "pretrained"
#: The optional input channel of the final job that carries the live model's ``model.tar.gz``
#: (``SM_CHANNEL_CHAMPION``): ``train.py`` evaluates it on the same test split as the new model.
CHAMPION_CHANNEL = "champion"
#: The final job's evaluation of its best weights on ``test``: in the model dir (so in
#: ``model.tar.gz``) and in the job output (``SM_OUTPUT_DATA_DIR``, so in ``output.tar.gz``).
EVALUATION_FILE = "evaluation.json"

# -- job statuses -----------------------------------------------------------------------
COMPLETED = "Completed"
FAILED = "Failed"
STOPPED = "Stopped"
IN_PROGRESS = "InProgress"
STOPPING = "Stopping"
#: Statuses that end a training, tuning or transform job; the event rules match only these.
TERMINAL_STATUSES: tuple[str, ...] = (COMPLETED, FAILED, STOPPED)

# -- serving ----------------------------------------------------------------------------
#: What may run the model on the endpoint (``BREEDLINE_SERVING_BACKEND``): ``auto``
#: (ONNX Runtime on a CPU instance when its export matches torch, else torch),
#: ``torch``, or ``onnx`` (fail rather than fall back).
SERVING_BACKENDS: tuple[str, ...] = ("auto", "torch", "onnx")
#: Why a predict answer says ``"abstained": true`` (issue 13): its top-1 probability is below
#: the model's confidence threshold, or its features are unlike every class (that one wins).
LOW_CONFIDENCE = "low_confidence"
OUT_OF_DISTRIBUTION = "out_of_distribution"
ABSTAIN_REASONS: tuple[str, ...] = (LOW_CONFIDENCE, OUT_OF_DISTRIBUTION)
#: The Accept media-type parameter that asks the endpoint for the raw answer (``?abstain=false``
#: on /predict): ``application/json; abstain=false``.
ABSTAIN_PARAMETER = "abstain"

# -- image formats ----------------------------------------------------------------------
#: The formats the model decodes, by the magic bytes an upload starts with. The predict
#: route, the serving script and the training decoder all check bodies against these.
IMAGE_SIGNATURES: tuple[tuple[bytes, str], ...] = ((b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"))
#: HEIF (what iPhones store photos as) is an ISO base media file: a ``ftyp`` box at byte 4
#: whose major brand (bytes 8-12) says what it holds. These brands are HEIC/HEIF still images
#: (``heic``/``heix``: HEVC, ``mif1``/``msf1``: the generic HEIF image brands), decoded as ``"heif"``
#: by pillow-heif in the model container; the Lambda only reads these bytes.
HEIF_BRANDS: tuple[bytes, ...] = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")
#: ISO base media brands recognised but never decoded (415), by major brand.
REFUSED_BRANDS: tuple[tuple[bytes, str], ...] = ((b"avif", "AVIF"), (b"avis", "AVIF"))
#: Image formats recognised but never decoded (415 whatever the Content-Type says), by magic bytes.
REFUSED_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
    (b"RIFF", "WebP"), (b"\x00\x00\x01\x00", "ICO"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xffO\xffQ", "JPEG 2000"), (b"%!PS", "EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"), (b"%PDF", "PDF"),
)


def iso_brand(data: bytes) -> bytes | None:
    """The major brand of an ISO base media file (HEIF, AVIF, MP4), or None if ``data`` is not one."""
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return bytes(data[8:12])
    return None


def sniff_image(data: bytes) -> str | None:
    """The decodable format (``"jpeg"``/``"png"``/``"heif"``) the first bytes announce, or None."""
    for magic, fmt in IMAGE_SIGNATURES:
        if data.startswith(magic):
            return fmt
    if iso_brand(data) in HEIF_BRANDS:
        return "heif"
    return None


def refused_format(data: bytes) -> str | None:
    """The name of a known image format the model never decodes (GIF, BMP, ...), if ``data`` starts with one."""
    for magic, name in REFUSED_FORMATS:
        if data.startswith(magic):
            return name
    brand = iso_brand(data)
    for refused, name in REFUSED_BRANDS:
        if brand == refused:
            return name
    return None


# -- debugging --------------------------------------------------------------------------
#: Batch predictions (issue 18): images go in under ``batch/<job>/`` (then its ready marker); the app
#: writes each run's manifest, the transform job's ``<key>.out`` files under ``output/``, the joined
#: ``results.jsonl`` and ``summary.json`` under ``batch-results/<job>/<transform job>/``. Fixed, not
#: settings: the IAM grants name the two prefixes.
BATCH_PREFIX = "batch/"
BATCH_RESULTS_PREFIX = "batch-results/"
BATCH_RESULTS_FILE = "results.jsonl"
BATCH_SUMMARY_FILE = "summary.json"
#: The transform job's Environment entry that makes the serving code answer a refused image as a
#: 200 line ``{"error": {...}}``, so one bad image never fails the whole job (``batch_errors.py``).
BATCH_ERRORS_VARIABLE = "BREEDLINE_BATCH_ERRORS"
BATCH_ERRORS_LINES = "lines"

#: Where Debugger's hooks and rules run (``BREEDLINE_DEBUGGER``): ``in_job`` (the
#: open-source smdebug library inside the training job; the request carries no
#: Debugger service configuration), ``service`` (SageMaker Debugger, for accounts
#: that have it), ``auto`` (``service``, retried once as ``in_job`` when
#: CreateTrainingJob is refused for a Debugger reason) or ``off``.
DEBUGGER_MODES: tuple[str, ...] = ("in_job", "service", "auto", "off")
#: The hyperparameter that tells ``train.py`` which of ``in_job``, ``service`` or
#: ``off`` the job runs under (``auto`` is resolved before the request is sent).
DEBUGGER_HYPERPARAMETER = "debugger"
#: The built-in Debugger rules the final job evaluates, in either mode.
RULE_NAMES: tuple[str, ...] = (
    "LossNotDecreasing",
    "Overfit",
    "Overtraining",
    "VanishingGradient",
    "PoorWeightInitialization",
)
#: Files of the final job's output (``SM_OUTPUT_DATA_DIR``, which becomes
#: ``output.tar.gz``): the in-job rule results, the smdebug trial's tensors and
#: the profiler's folder (``summary.json``, ``profiler-report.html``, traces).
RULES_FILE = "rules.json"
TENSORS_DIR = "tensors"
PROFILER_DIR = "profiler"
PROFILER_REPORT_FILE = "profiler-report.html"


def rule_metric_name(rule: str) -> str:
    """The metric a rule's result is reported as: ``rule_LossNotDecreasing`` (1 = issue found, 0 = none)."""
    if rule not in RULE_NAMES:
        raise ValueError(f"unknown rule {rule!r}; add it to RULE_NAMES first")
    return f"rule_{rule}"


#: One metric per rule, beside the training metrics.
RULE_METRIC_NAMES: tuple[str, ...] = tuple(rule_metric_name(r) for r in RULE_NAMES)

# -- metrics ----------------------------------------------------------------------------
#: Metric names, in the order train.py reports them: per epoch (``epoch_seconds`` last), then the
#: final job's evaluation of the best weights on ``test``, then the live model (the ``champion``
#: channel) evaluated on the same test images.
METRIC_NAMES: tuple[str, ...] = (
    "train_loss",
    "train_accuracy",
    "valid_loss",
    "valid_accuracy",
    "valid_balanced_accuracy",
    "valid_macro_f1",
    "epoch_seconds",
    "test_loss",
    "test_accuracy",
    "test_balanced_accuracy",
    "test_macro_f1",
    "test_majority_accuracy",
    "test_majority_macro_f1",
    "test_ece",
    # the abstention's confidence threshold (fitted on valid) and the share of test it abstains on
    "confidence_threshold",
    "test_abstained_share",
    "champion_test_accuracy",
    "champion_test_balanced_accuracy",
    "champion_test_macro_f1",
)
#: Metrics where higher is better (a tuning objective on one of them is maximised); the rest
#: (losses, ``test_ece``, ``epoch_seconds``) are better lower.
MAXIMISED_METRICS: frozenset[str] = frozenset(
    name for name in METRIC_NAMES if name.endswith(("_accuracy", "_macro_f1"))
)


def objective_direction(name: str) -> str:
    """The tuning objective type a metric needs: ``Maximize`` for accuracies and F1, else ``Minimize``.

    Why: a tuner told to minimise macro-F1 would pick the worst trial; the app refuses the mismatch.
    """
    return "Maximize" if name in MAXIMISED_METRICS else "Minimize"


def check_objective(name: str, objective_type: str) -> None:
    """Refuse a tuning objective type that points the wrong way for its metric (``BREEDLINE_OBJECTIVE_*``)."""
    if objective_type != (direction := objective_direction(name)):
        raise ValueError(f"BREEDLINE_OBJECTIVE_METRIC={name} needs BREEDLINE_OBJECTIVE_TYPE={direction}, "
                         f"not {objective_type!r}")


#: Every metric line starts with this, at the start of the line. Why: the log also holds
#: file names (a skipped image, say), and a data set may hold ``test_accuracy=99.jpg``. Every
#: name ``train.py`` logs is quoted (:func:`quote_name`), so no logged name can start a line,
#: and a line that starts with this prefix and holds nothing but one metric is one of ours.
METRIC_LINE_PREFIX = "#breedline-metric"

_NUMBER = r"([-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)"


def metric_regex(name: str) -> str:
    """The ``MetricDefinitions`` regex of one metric: anchored at both ends of its line.

    ``^#breedline-metric (epoch=N )?name=NUMBER`` and nothing after it but
    blanks. SageMaker matches it against each log line (one CloudWatch event);
    :func:`parse_metrics` does the same with ``re.MULTILINE``.
    """
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ValueError(f"metric name {name!r}: letters, digits and _ only (it is written into a regex)")
    # Written out, not re.escape'd: '#', '-' and the name are literal in every regex dialect.
    return rf"^{METRIC_LINE_PREFIX} (?:epoch=[0-9]+ )?{name}={_NUMBER}[ \t\r]*$"


#: SageMaker ``MetricDefinitions``: a name and a regex with one capture group.
METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": name, "Regex": metric_regex(name)} for name in METRIC_NAMES + RULE_METRIC_NAMES
]


def format_metric(name: str, value: float, epoch: int | None = None) -> str:
    """Return the log line for one metric, e.g. ``#breedline-metric epoch=2 valid_loss=0.412300``.

    One metric per line keeps every regex independent of the others.
    """
    if name not in METRIC_NAMES and name not in RULE_METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; add it to METRIC_NAMES first")
    tag = "" if epoch is None else f"epoch={int(epoch)} "
    return f"{METRIC_LINE_PREFIX} {tag}{name}={float(value):.6f}"


def quote_name(name: object) -> str:
    """A file or class name as the job's log shows it: JSON-quoted, control and non-ASCII characters escaped.

    Why: a name may hold anything a file system allows, a newline included;
    quoted, it can neither start a log line nor end one, so it can never
    look like a metric line (:data:`METRIC_LINE_PREFIX`).
    """
    return json.dumps(str(name))


def parse_metrics(log_text: str, definitions: list[dict[str, str]] | None = None) -> dict[str, list[float]]:
    """Apply ``MetricDefinitions`` to log text the way SageMaker does: each regex to each line.

    Returns every value seen per metric name, in order; the last one is the
    final value SageMaker reports in ``FinalMetricDataList``.
    """
    found: dict[str, list[float]] = {}
    for definition in definitions or METRIC_DEFINITIONS:
        pattern = re.compile(definition["Regex"], re.MULTILINE)
        values = [float(m.group(1)) for m in pattern.finditer(log_text)]
        if values:
            found[definition["Name"]] = values
    return found


# -- hyperparameters --------------------------------------------------------------------
#: Hyperparameters that configure SageMaker's script mode rather than train.py;
#: the training toolkit consumes them and never passes them to the script.
TOOLKIT_PREFIX = "sagemaker_"


def encode_hyperparameter(value: Any) -> str:
    """A script-mode toolkit value as a request carries it: JSON text (``"train.py"`` -> ``'"train.py"'``).

    Why: the training toolkit JSON-decodes every ``sagemaker_*`` value, so a
    plain string there would not survive its way into the container.
    """
    return json.dumps(value)


def decode_hyperparameter(value: Any) -> Any:
    """One value as the training toolkit decodes it: JSON where it parses, else the text itself."""
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value


def unquote_hyperparameter(value: Any) -> str:
    """Undo JSON quoting of a tuned value: ``'"\\"32\\""'`` -> ``'32'``.

    SageMaker's tuner hands categorical values back JSON-encoded, sometimes
    twice, and ``hyperparameters.json`` holds every value as a JSON string;
    passed on as-is, ``int("\\"32\\"")`` would fail in the container. A value
    that is not text comes back as its JSON (``3`` -> ``'3'``).
    """
    if not isinstance(value, str):
        return json.dumps(value)
    text = value.strip()
    for _ in range(5):
        if not (len(text) >= 2 and text[0] == '"' and text[-1] == '"'):
            break
        try:
            decoded = json.loads(text)
        except json.JSONDecodeError:
            decoded = text[1:-1]
        if not isinstance(decoded, str):
            return json.dumps(decoded)
        text = decoded.strip()
    return text


def unquote_hyperparameters(values: dict[str, Any]) -> dict[str, str]:
    """The tuner's ``TunedHyperParameters``, unquoted, without the toolkit's own keys."""
    return {str(k): unquote_hyperparameter(v) for k, v in values.items() if not str(k).startswith(TOOLKIT_PREFIX)}
