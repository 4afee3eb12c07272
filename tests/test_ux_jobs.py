"""Jobs and state as the UI shows them, without a browser: whose job it is, a closed page's jobs, the queue line,
the model bar's two halves, a refused component named in the UI's words and blamed by role."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from webui.config import Settings
from webui.engine.jobs import JobQueue, JobState
from webui.engine.pipelines import ModelChoice, ModelLoadError
from webui.models.kinds import Role
from webui.ui import choices
from webui.ui.context import owner_of
from webui.ui.queue_status import queue_text


@pytest.fixture(scope="module")
def context(tiny_models_dir, tmp_path_factory):
    from webui.app import open_context

    scratch = tmp_path_factory.mktemp("ux-jobs")
    settings = Settings(
        models_dir=tiny_models_dir, outputs_dir=scratch / "outputs", settings_file=scratch / "settings.json"
    )
    ctx = open_context(settings)
    ctx.queue.start()
    yield ctx
    ctx.queue.stop(timeout=30)


def blocking(release: threading.Event):
    def call(_engine, _progress, cancel):
        while not (release.is_set() or cancel.cancelled):
            time.sleep(0.01)

    return call


def test_the_owner_is_the_login_else_the_machine_not_the_tab():
    alice_tab = SimpleNamespace(username="alice", session_hash="tab-1", client=SimpleNamespace(host="10.0.0.5"))
    local_tab_1 = SimpleNamespace(username=None, session_hash="tab-1", client=SimpleNamespace(host="127.0.0.1"))
    local_tab_2 = SimpleNamespace(username=None, session_hash="tab-2", client=SimpleNamespace(host="127.0.0.1"))
    assert owner_of(alice_tab) == "alice"
    assert owner_of(local_tab_1) == owner_of(local_tab_2) == "127.0.0.1"  # the same person in a new tab


def test_a_closed_pages_jobs_are_cancelled_and_only_those():
    queue = JobQueue(engine=None)
    release = threading.Event()
    running = queue.submit_call(blocking(release), "me", "txt2img", session="page-1")
    queue.start()
    try:
        while running.state is not JobState.RUNNING:
            time.sleep(0.01)
        waiting = queue.submit_call(blocking(release), "me", "compare", session="page-1")
        other_page = queue.submit_call(blocking(release), "me", "txt2img", session="page-2")
        api = queue.submit_call(blocking(release), "me", "txt2img")
        assert set(queue.cancel_session("page-1")) == {running, waiting}
        assert running.wait(10) and running.state is JobState.CANCELLED and waiting.state is JobState.CANCELLED
        assert other_page.state is not JobState.CANCELLED and api.state is not JobState.CANCELLED
    finally:
        release.set()
        queue.stop(timeout=10)


def test_the_queue_line_tells_mine_from_anothers_and_counts_the_running_job_first():
    queue = JobQueue(engine=None)
    release = threading.Event()
    assert queue_text(queue, "me") == ("Studio idle", False)
    theirs = queue.submit_call(blocking(release), "bob", "txt2img")
    queue.start()
    try:
        while theirs.state is not JobState.RUNNING:
            time.sleep(0.01)
        assert queue_text(queue, "me") == ("Studio: busy with another user's job", False)
        queue.submit_call(blocking(release), "bob", "txt2img")
        queue.submit_call(blocking(release), "me", "compare")
        text, mine = queue_text(queue, "me")
        assert text == "Studio: busy with another user's job; your Compare grid is #3 in line" and mine
        assert "bob" not in text
        text, _ = queue_text(queue, "bob")
        assert text.startswith("Studio: running your txt2img; your txt2img is #2 in line")
    finally:
        release.set()
        queue.stop(timeout=10)


class TwoEngineQueue(JobQueue):
    """A queue as a spread-out engine has it (`webui.cluster`): one worker per replica, here two."""

    @property
    def workers(self) -> int:
        return 2


def test_the_queue_line_with_two_replicas_names_each_running_job_and_counts_both_first():
    queue = TwoEngineQueue(engine=None)
    release = threading.Event()
    mine = queue.submit_call(blocking(release), "me", "txt2img")
    theirs = queue.submit_call(blocking(release), "bob", "compare")
    queue.start()
    try:
        while not (mine.state is theirs.state is JobState.RUNNING):
            time.sleep(0.01)
        queue.submit_call(blocking(release), "me", "compare")
        text, interruptible = queue_text(queue, "me")
        assert text == "Studio: running your txt2img; busy with another user's job; your Compare grid is #3 in line"
        assert interruptible
        assert queue_text(queue, "carol") == ("Studio: busy with 2 jobs of other users", False)
    finally:
        release.set()
        queue.stop(timeout=10)


def test_with_replicas_the_bar_shows_the_tabs_choice_and_whether_a_replica_holds_it(context, tiny_models_dir):
    from webui.cluster.control import ReplicaRecord
    from webui.cluster.routing import model_id
    from webui.ui.model_bar import status_html

    now = time.time()
    held = model_id(ModelChoice(tiny_models_dir / "checkpoints" / "tiny-sd2.safetensors"))
    records = [ReplicaRecord("4kq2m0xv", "10.0.0.5", "a", now, now, models=[held], loads=1)]
    front = SimpleNamespace(library=context.library, queue=SimpleNamespace(replicas=lambda: records))
    text = status_html(front, {"checkpoint": "tiny-sd2.safetensors"})
    head, replicas = text.split('<div class="model-engine">')
    assert "<b>tiny-sd2</b> · held by a replica" in head and "4kq2m0xv on 10.0.0.5: holds tiny-sd2" in replicas
    assert "<b>tiny-sd1</b> · loads on Generate" in status_html(front, {"checkpoint": "tiny-sd1.safetensors"})


def test_the_bar_shows_the_tabs_choice_and_apart_what_the_engine_holds(context, tiny_models_dir):
    from webui.ui.model_bar import status_html

    sd1, sd2 = "tiny-sd1.safetensors", "tiny-sd2.safetensors"
    context.engine.manager.load(ModelChoice(tiny_models_dir / "checkpoints" / sd2))  # the last job's model
    mine = status_html(context, {"checkpoint": sd1})
    head, engine = mine.split('<div class="model-engine">')
    assert "<b>tiny-sd1</b> · loads on Generate" in head and "tiny-sd2" not in head
    assert "the engine holds <b>tiny-sd2</b>" in engine
    same = status_html(context, {"checkpoint": sd2, "vae": choices.FROM_CHECKPOINT})
    assert "<b>tiny-sd2</b> loaded in" in same and "model-engine" not in same


def test_a_refused_component_is_blamed_by_role_in_the_uis_words(context, tiny_models_dir):
    checkpoint = tiny_models_dir / "checkpoints" / "tiny-sd1.safetensors"
    wrong_encoder = tiny_models_dir / "text_encoders" / "tiny-sd2-open-clip-h.safetensors"
    with pytest.raises(ModelLoadError) as refused:
        context.engine.manager.load(ModelChoice(checkpoint, text_encoder=wrong_encoder))
    assert refused.value.role is Role.TEXT_ENCODER
    reason = str(refused.value).split(".safetensors: ", 1)[1]
    assert reason.startswith("this text encoder is OpenCLIP-H, but SD1.x models take CLIP-L as their text encoder")
    lora = tiny_models_dir / "loras" / "tiny-sd1-kohya.safetensors"
    with pytest.raises(ModelLoadError, match="this is a LoRA file, not a VAE") as refused:
        context.engine.manager.load(ModelChoice(checkpoint, vae=lora))
    assert refused.value.role is Role.VAE


def test_after_a_refused_load_the_component_goes_back_to_from_checkpoint(context):
    from webui.ui.model_bar import OVERRIDE_ROLES, after_load

    request = SimpleNamespace(session_hash="tab-9", username=None, client=None)
    context.note_refusal("tab-9", "text_encoder")
    values = {"checkpoint": "tiny-sd1.safetensors", "text_encoder": "tiny-sd2-open-clip-h.safetensors"}
    status, *updates = after_load(context, values, request)
    by_role = dict(zip([role.value for role in OVERRIDE_ROLES], updates, strict=True))
    assert by_role["text_encoder"]["value"] == choices.FROM_CHECKPOINT
    assert "open-clip-h" not in status  # the status shows the choice as it now stands
    assert context.take_refusal("tab-9") is None  # taken once


def test_lists_sort_by_name_whatever_the_case_and_every_component_says_what_it_is(context):
    library = context.library
    assert choices.by_name(["b", "A", "a", "C"]) == ["A", "a", "b", "C"]
    names = choices.checkpoints(library)
    assert names == sorted(names, key=str.casefold)
    family = choices.family_of(library, "tiny-sdxl.safetensors")
    for role in (Role.VAE, Role.UNET, Role.TEXT_ENCODER):
        labels = [label for label, value in choices.component_choices(library, role, family)[1:]]
        assert labels and all(label.endswith(")") and " (" in label for label in labels), role
    vaes = dict((value, label) for label, value in choices.component_choices(library, Role.VAE, family)[1:])
    fitting = choices.fitting_components(library, Role.VAE, family)
    assert fitting and all(vaes[name].endswith("(SD-family VAE: SD1/SD2/SDXL)") for name in fitting)
    assert vaes["tiny-flux-ae.safetensors"].endswith("(16-channel VAE: SD3/FLUX.1)")  # listed after, as a misfit


def test_a_settings_error_names_the_field_as_the_page_labels_it():
    from webui.ui.settings_tab import preferences_with_labels

    labels = {"ram_budget_gb": "RAM for cached models, GB (0: half the RAM)"}
    with pytest.raises(ValueError, match=r"^RAM for cached models, GB \(0: half the RAM\): -5.0 is negative"):
        preferences_with_labels({"ram_budget_gb": -5}, labels)
