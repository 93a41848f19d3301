"""Request and response bodies of the HTTP API; every field is documented in the OpenAPI schema."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from streams.records import normalize_label, normalize_text

LearnerState = Literal["running", "paused", "standby", "absent"]
# Texts and labels as the learner sees them: other line breaks as newlines, labels in NFC.
Text = Annotated[str, AfterValidator(normalize_text)]
Label = Annotated[str, AfterValidator(normalize_label)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictRequest(Strict):
    inputs: list[Text] = Field(
        min_length=1,
        description="Texts to classify: at most RETENTIVE_MAX_INPUTS (default 256), each at most "
        "RETENTIVE_MAX_TEXT_CHARS characters (default 10000).",
    )
    top_k: int = Field(1, ge=1, le=100, description="How many ranked labels to return per text.")


class Scored(Strict):
    label: str = Field(description="A label the model has learned.")
    score: float = Field(description="Softmax probability of the label.")


class Prediction(Strict):
    label: str = Field(description="The most likely label.")
    score: float = Field(description="Its softmax probability.")
    top: list[Scored] = Field(description="The top_k labels, most likely first.")
    prediction_id: str = Field(description="Identifies this prediction; send it back with feedback on it.")


class PredictResponse(Strict):
    model_version: int = Field(description="Version of the snapshot whose weights answered.")
    snapshot_id: str = Field(description="That snapshot's id.")
    predictions: list[Prediction] = Field(description="One per input, in input order.")


class FeedbackExample(Strict):
    text: str = Field(description="The text.")
    label: str = Field(description="Its correct label; a label not seen before is learned as a new class.")
    id: str | None = Field(None, description="Idempotency key: an id sent again is not added twice.")
    slice: str | None = Field(None, description="Free tag for grouping feedback, e.g. a customer or source.")
    prediction_id: str | None = Field(None, description="The prediction this feedback corrects or confirms.")


class FeedbackRequest(Strict):
    examples: list[FeedbackExample] = Field(
        min_length=1, description="Labelled examples: at most RETENTIVE_MAX_EXAMPLES (default 1000)."
    )


class FeedbackResponse(Strict):
    accepted: int = Field(description="Examples added to the stream.")
    duplicates: int = Field(description="Examples whose id had been sent before; nothing was added for them.")
    stream_ids: list[str] = Field(description="Stream entry of each example, in request order.")


class HistoryPoint(Strict):
    updates: int = Field(description="Learner updates at the evaluation.")
    model_version: int = Field(description="Model version at the evaluation.")
    accuracy: float = Field(description="Accuracy on the probe.")


class ProbeReport(BaseModel):
    name: str = Field(description="Probe set name.")
    source: str | None = Field(description="registered (by a user) or held_out (from the stream).")
    size: int | None = Field(description="Examples in the probe set.")
    accuracy: float | None = Field(description="Accuracy at the latest evaluation.")
    best_accuracy: float | None = Field(description="Best accuracy so far.")
    forgetting: float | None = Field(
        description="best_accuracy minus the accuracy now of the same examples (a held-out set still "
        "growing has more); best_accuracy is the reference evaluation's, which moves to a later one only "
        "when that is significantly better or the set has grown without a significant drop."
    )
    forgetting_p_value: float | None = Field(
        None,
        description="Chance of a drop at least this large with nothing forgotten (one-sided exact McNemar "
        "test on the examples that changed); an alarm needs it below 0.01.",
    )
    accuracy_interval: list[float] | None = Field(None, description="95% Wilson interval of the accuracy.")
    forgetting_interval: list[float] | None = Field(
        None, description="95% interval of the forgetting (paired over the probe's examples)."
    )
    history: list[HistoryPoint] = Field(description="Accuracy over time.")


class ForgettingSummary(Strict):
    mean_accuracy: float | None = Field(description="Mean accuracy over probes at the latest evaluation.")
    mean_forgetting: float | None = Field(description="Mean forgetting over probes.")
    max_forgetting: float | None = Field(description="Largest forgetting of any probe.")
    bwt: float | None = Field(
        description="Backward transfer: mean of accuracy now minus when first evaluated."
    )


class AlarmReport(BaseModel):
    probe: str = Field(description="The probe whose forgetting passed the threshold.")
    forgetting: float = Field(
        description="Its forgetting (best accuracy minus accuracy) when the alarm fired."
    )
    best_accuracy: float = Field(description="Its best accuracy so far at that time.")
    accuracy: float = Field(description="Its accuracy at that evaluation.")
    updates: int = Field(description="Learner updates at that evaluation.")
    model_version: int = Field(description="Model version at that evaluation.")
    at: str = Field(description="Time of that evaluation (ISO 8601, UTC).")


class LabelAccuracy(Strict):
    accuracy: float = Field(description="Share of this label's examples predicted right before learning.")
    scored: int = Field(description="Examples of this label scored.")


class PrequentialReport(Strict):
    cumulative: float | None = Field(
        description="Share of the examples trained on that the model predicted right just before learning "
        "from each (test-then-train); null before any."
    )
    last_1000: float | None = Field(description="The same over the last 1,000 examples trained on.")
    scored: int = Field(description="Examples scored so far.")
    per_label: dict[str, LabelAccuracy] = Field(description="The same per true label.")


class ServedRecent(Strict):
    joined: int = Field(description="Joins counted here (at most 1,000).")
    accuracy: float | None = Field(description="Share of them whose served label was the feedback's.")
    median_delay_s: float | None = Field(description="Median seconds from prediction to its feedback.")


class ServedVersion(Strict):
    model_version: int = Field(description="The model version that served the predictions.")
    joined: int = Field(description="Its predictions that got feedback.")
    accuracy: float = Field(description="Share of those that were right.")


class ServedLabel(Strict):
    label: str = Field(description="The label the feedback gave.")
    joined: int = Field(description="Predictions of texts with this label that got feedback.")
    accuracy: float = Field(description="Share of those that were right (recall of the served answers).")


class ServedReport(Strict):
    predictions: int = Field(
        description="Answered predictions remembered so far, to be joined with feedback."
    )
    unremembered: int = Field(
        description="Answered predictions not remembered, past RETENTIVE_PREDICTION_CAP."
    )
    joined: int = Field(description="Remembered predictions whose feedback arrived (each counted once).")
    coverage: float | None = Field(description="joined / predictions: the share that got feedback.")
    accuracy: float | None = Field(
        description="Share of joined predictions whose served label was the label the feedback gave."
    )
    last_1000: ServedRecent = Field(description="The same over the last 1,000 joins, with the label delay.")
    mean_delay_s: float | None = Field(description="Mean seconds from a prediction to its feedback.")
    per_version: list[ServedVersion] = Field(description="Per model version that served (the newest 20).")
    per_label: list[ServedLabel] = Field(description="Per label the feedback gave.")


class ForgettingResponse(Strict):
    model_version: int | None = Field(description="Model version at the latest evaluation; null before any.")
    updates: int | None = Field(description="Learner updates at the latest evaluation.")
    evaluated_at: str | None = Field(description="Time of the latest evaluation (ISO 8601, UTC).")
    summary: ForgettingSummary = Field(description="Forgetting over all probes.")
    probes: list[ProbeReport] = Field(description="Per probe: accuracy, best, forgetting, history.")
    alarms: list[AlarmReport] = Field(
        description="Active alarms: probes whose forgetting passed the threshold."
    )
    prequential: PrequentialReport | None = Field(
        None,
        description="How fast the learner adapts: each example scored before it was learned from; null "
        "before the learner reported any. The probes show what it kept.",
    )
    served: ServedReport = Field(
        description="How right the answers people got were: predictions joined, by prediction_id, with "
        "the feedback that named them."
    )


class HeldBack(Strict):
    updates: int = Field(description="Learner updates behind the weights held back.")
    reason: str = Field(description="Which labels' probe examples went wrong, and how significantly.")
    held_back_at: str = Field(description="When the check failed (ISO 8601).")


class ModelResponse(Strict):
    model_version: int | None = Field(description="Version served by this replica; null before any snapshot.")
    snapshot_id: str | None = Field(description="Snapshot served by this replica.")
    base_model: str = Field(description="The encoder the model was built on.")
    strategy: str = Field(description="Update strategy of the learner.")
    labels: list[str] = Field(description="Labels the served model knows.")
    counters: dict[str, int] = Field(description="Stream and learner counters.")
    stream_lag: int = Field(description="Accepted entries not yet acknowledged by the learner.")
    learner: LearnerState = Field(
        description="running or paused (a learner holds the lease), standby (learners are waiting to take "
        "it over), or absent."
    )
    paused_reason: str | None = Field(description="Why learning is paused; null when it is not.")
    last_snapshot_at: str | None = Field(description="When the newest full snapshot was written (ISO 8601).")
    held_back: HeldBack | None = Field(
        description="Why the learner's newest weights are not served: they failed the promotion check, and "
        "replicas serve the last version that passed (model_version). Null when the newest passed."
    )


class LearnerStatus(Strict):
    learner: LearnerState = Field(description="running, paused, standby or absent; see GET /v1/model.")
    paused_reason: str | None = Field(description="Why learning is paused; null when it is not.")


class LayerKeepRate(Strict):
    layer: str = Field(description="A gated linear layer, by its module name.")
    keep_rate: float = Field(description="Share of the layer's rows updated by the last step.")


class LearnerReport(LearnerStatus):
    strategy: str = Field(description="Update strategy of the learner (RETENTIVE_STRATEGY).")
    quantile: float = Field(
        description="Rows below this per-layer quantile get no update (RETENTIVE_QUANTILE)."
    )
    updates: int | None = Field(description="Learner updates so far; null before the learner reported any.")
    updates_per_s: float | None = Field(description="Updates per second between the last two reports.")
    examples_per_s: float | None = Field(
        description="Examples trained per second between the last two reports."
    )
    keep_rate: float | None = Field(
        description="Share of all gated rows updated by the last step; null without MIGU or before a step."
    )
    layers: list[LayerKeepRate] = Field(
        description="Keep-rate per gated layer at the last step, in model order; empty without MIGU or "
        "before the first step."
    )


class EvaluationColumn(Strict):
    updates: int = Field(description="Learner updates at the evaluation.")
    model_version: int = Field(description="Model version at the evaluation.")
    evaluated_at: str = Field(description="Time of the evaluation (ISO 8601, UTC).")


class AccuracyMatrix(Strict):
    probes: list[str] = Field(description="Probe names, sorted: the rows of `accuracy`.")
    evaluations: list[EvaluationColumn] = Field(description="Evaluations, oldest first: the columns.")
    accuracy: list[list[float | None]] = Field(
        description="accuracy[i][j]: accuracy of probe i at evaluation j; null where the probe was not "
        "evaluated then."
    )
    alarms: list[AlarmReport] = Field(description="Alarms that fired at these evaluations, oldest first.")


class VersionEvent(Strict):
    version: int = Field(description="The model version published.")
    snapshot_id: str = Field(description="The snapshot (or weights publication) that holds it.")
    kind: str = Field(
        description="snapshot (a full, recoverable snapshot) or weights (weights alone, published for "
        "serving between snapshots)."
    )
    published_at: str = Field(description="When it was published (ISO 8601, UTC).")
    rolled_back_to: str | None = Field(
        description="The snapshot whose weights this version restored, when it followed a rollback."
    )


class LabelRemoval(Strict):
    labels: list[Label] = Field(
        min_length=1,
        max_length=100,
        description="Labels to take out of the model: their head rows, replayed examples and held-out probe "
        "sets. Feedback that names one later adds it anew.",
    )


class LabelRemovalAccepted(Strict):
    removing: list[str] = Field(description="The labels the learner will take out before its next step.")
    learner: LearnerState = Field(
        description="running or paused: the learner removes them next; standby or absent: once one runs."
    )


class RollbackOptions(Strict):
    replay: bool = Field(
        False,
        description="Also re-apply the feedback the learner applied after that snapshot (as far as the "
        "stream still holds it). Default: that feedback is dropped from the model.",
    )


class RollbackAccepted(Strict):
    snapshot_id: str = Field(description="The snapshot the learner will continue from.")
    replay: bool = Field(description="Whether later feedback is re-applied.")
    requested_at: float = Field(description="Unix time of the request.")
    learner: LearnerState = Field(
        description="The learner's state now; the rollback happens when an active learner reads it, and "
        "every replica then serves a new version holding that snapshot's weights."
    )


class ProbeExample(Strict):
    text: Text = Field(min_length=1, description="A text.")
    label: Label = Field(min_length=1, description="Its correct label.")


class ProbeSetRequest(Strict):
    examples: list[ProbeExample] = Field(
        min_length=1,
        description="The probe set: at most RETENTIVE_PROBE_SIZE labelled examples, kept out of training.",
    )


class ProbeInfo(Strict):
    name: str = Field(description="Probe set name.")
    source: str = Field(description="registered (by an operator) or held_out (from the stream).")
    size: int = Field(description="Examples in the probe set.")
    accuracy: float | None = Field(description="Accuracy at the latest evaluation; null before one.")
    best_accuracy: float | None = Field(description="Best accuracy so far.")
    forgetting: float | None = Field(description="best_accuracy minus accuracy.")


class SnapshotInfo(Strict):
    id: str = Field(description="Snapshot id.")
    version: int = Field(description="Model version it holds.")
    parent: str | None = Field(description="The snapshot it was taken after.")
    created_at: str = Field(description="When it was written (ISO 8601, UTC).")
    pinned: bool = Field(description="Pinned snapshots are never removed by retention.")
    updates: int | None = Field(description="Learner updates it holds.")
    mean_accuracy: float | None = Field(description="Mean probe accuracy when it was written.")
    alarms: int | None = Field(description="Forgetting alarms active when it was written.")
    promoted: bool = Field(
        description="Whether its weights passed the promotion check; replicas never serve one that did not."
    )


class ErrorDetail(Strict):
    code: str = Field(description="Machine-readable error code.")
    message: str = Field(description="What went wrong and what to fix.")
    details: Any = Field(None, description="Extra data, e.g. the failing fields.")


class ErrorBody(Strict):
    error: ErrorDetail


class DeadLetterInfo(Strict):
    dead_id: str = Field(description="Its ID in the dead-letter stream; name it to requeue it.")
    stream_id: str = Field(description="The entry's ID in the feedback stream.")
    reason: str = Field(description="Why the learner could not use it.")
    fields: dict[str, str] = Field(description="The entry's fields as stored (text, label, id, ...).")


class RequeueRequest(Strict):
    ids: list[str] | None = Field(None, min_length=1, description="Dead letters to put back, by dead_id.")
    all: bool = Field(False, description="Put every dead letter back.")


class RequeueReport(Strict):
    requeued: dict[str, str] = Field(description="dead_id to the entry's new ID in the feedback stream.")
    refused: dict[str, str] = Field(description="dead_id to why it stayed (still malformed, no such ID).")
