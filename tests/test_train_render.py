"""One prompt everywhere: the ids, loss mask and pixels TRL trains on equal what a runtime Session renders for the
same conversation (SFT collator and GRPO rollout paths), and the TRL traps the training code works around."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("trl")

from edge_awares.crops import AWARES_CROPS
from edge_awares.data.format import Trajectory, read_trajectories
from edge_awares.errors import ConfigError, DataError, TrainError
from edge_awares.models import read_checkpoint
from edge_awares.protocols import get_protocol
from edge_awares.protocols.tool_call import crop_tool_schema
from edge_awares.session import Session
from edge_awares.tokenizer import TextTokenizer
from edge_awares.train.collate import make_collator
from edge_awares.train.render import TrajectoryRenderer, make_processor, sampled_mask

from fakes import ScriptedBackend
from test_train_support import ground_truth_trajectories, tiny_base


@pytest.fixture(scope="module")
def setup():
    info = read_checkpoint(tiny_base())
    proto = get_protocol("tool_call")
    renderer = TrajectoryRenderer(proto, AWARES_CROPS, info.geometry)
    processor = make_processor(info.path, renderer.geometry)
    return SimpleNamespace(info=info, proto=proto, renderer=renderer, processor=processor,
                           collator=make_collator(processor, renderer), tok=TextTokenizer.from_file(info.path),
                           trajs=read_trajectories(ground_truth_trajectories()))


def _scripted_session(s, traj, renderer=None):
    """A Session whose 'model' writes the trajectory's assistant turns, so it renders the same conversation."""
    renderer = renderer or s.renderer
    conv = renderer.conversation(traj)
    scripts = [m.content[0] for m in conv.messages if m.role == "assistant"]
    backend = ScriptedBackend(s.tok, scripts)
    session = Session(backend, s.tok, renderer.protocol, AWARES_CROPS, s.info.geometry)
    return conv, session.run(renderer.image(traj.image), traj.question)


@pytest.mark.parametrize("protocol", ["tool_call", "awares", "ergo"])
@pytest.mark.parametrize("label", ["HR", "LR"])
def test_sft_batch_equals_session(setup, label, protocol):
    s = setup
    renderer = TrajectoryRenderer(get_protocol(protocol), AWARES_CROPS, s.info.geometry)
    collator = make_collator(make_processor(s.info.path, renderer.geometry), renderer)
    traj = next(t for t in s.trajs if t.label == label)
    batch = collator([renderer.row(traj)])
    conv, result = _scripted_session(s, traj, renderer)
    ids = batch["input_ids"][0].tolist()
    n = len(result.ids)
    assert result.requested == (label == "HR")
    assert ids[:n] == result.ids.tolist()
    # The template ends the conversation with a newline after the final <|im_end|>; it is never trained.
    assert s.tok.decode(ids[n:], skip_special_tokens=False) == "\n"
    trained = (batch["labels"][0] != -100).int().tolist()
    assert trained[:n] == result.mask.tolist() and not any(trained[n:])
    pixels = np.concatenate([v.pixel_values() for v in conv.views])
    np.testing.assert_allclose(batch["pixel_values"].numpy(), pixels, atol=1e-5)
    assert batch["image_grid_thw"].tolist() == [list(v.grid_thw) for v in conv.views]


def test_request_turn_weighted(setup):
    s = setup
    traj = next(t for t in s.trajs if t.label == "HR")
    batch = s.collator([s.renderer.row(traj)])
    w, trained = batch["loss_weights"][0], batch["labels"][0] != -100
    conv = s.renderer.conversation(traj)
    request_ids = s.tok.encode_markup(conv.messages[1].content[0]) + [s.tok.token_id("<|im_end|>")]
    answer_ids = s.tok.encode(conv.messages[3].content[0]) + [s.tok.token_id("<|im_end|>")]
    assert (w[trained] == 5.0).sum() == len(request_ids) and (w[trained] == 1.0).sum() == len(answer_ids)
    assert (w[~trained] == 0).all()


def test_grpo_rollout_ids_equal_session(setup):
    """TRL's GRPO path: the prompt rendered with the environment's tool (after reset), the sampled request, TRL's
    tool-suffix ids around the environment's crop result, and the answer, equal the session's ids."""
    from trl.chat_template_utils import get_training_chat_template, is_chat_template_prefix_preserving
    from trl.data_utils import prepare_multimodal_messages
    from trl.trainer.grpo_trainer import GRPOTrainer

    from edge_awares.chat import encode
    from edge_awares.session import crop_turn_pieces, stop_token_ids
    from edge_awares.train.grpo import make_environment, make_response_parser, prompt_messages

    s = setup
    traj = next(t for t in s.trajs if t.label == "HR")
    conv, result = _scripted_session(s, traj)
    env = make_environment(s.proto, AWARES_CROPS, s.renderer.geometry)()
    observation = env.reset(image_path=str(traj.image), question=traj.question)
    prompt = prompt_messages(s.proto, AWARES_CROPS)
    prompt[-1] = {"role": "user", "content": [{"type": "text", "text": ""}] + observation}  # as TRL appends it
    proc = s.processor
    template = None if is_chat_template_prefix_preserving(proc) else get_training_chat_template(proc)
    prompt_ids = proc.apply_chat_template([prepare_multimodal_messages(prompt)], tools=[env.crop],
                                          chat_template=template, add_generation_prompt=True, tokenize=True,
                                          return_dict=True)["input_ids"][0]
    im_end = s.tok.token_id("<|im_end|>")
    request = s.tok.encode_markup(conv.messages[1].content[0]) + [im_end]
    # TRL's loop: our response parser reads the sampled ids as a tool call, TRL calls the tool with its arguments
    message = make_response_parser(s.proto, AWARES_CROPS, s.tok, stop_token_ids(s.tok))(request)
    assert message["content"] == conv.messages[1].content[0] and len(message["tool_calls"]) == 1
    call = message["tool_calls"][0]["function"]
    tool_message = {"role": "tool", "name": call["name"], "content": env.crop(**call["arguments"])}
    trainer = SimpleNamespace(processing_class=proc, _is_vlm=True, chat_template=template, chat_template_kwargs={},
                              _tokenizer=proc.tokenizer)
    suffix = GRPOTrainer._get_tool_suffix_ids(trainer, [tool_message])
    answer = s.tok.encode(conv.messages[3].content[0]) + [im_end]
    assert list(prompt_ids) + request + suffix + answer == result.ids.tolist()
    assert env.calls == 1 and [v.crop_id for v in env.fetched] == traj.crop_ids
    # the crop-turn layout GRPO's budget counts is the one TRL renders
    assert len(encode(crop_turn_pieces(s.proto, env.fetched, traj.question), s.tok)) == len(suffix)


def test_response_parser_follows_the_sessions_rules(setup):
    """An answer has no tool call; a request and an unparseable request both become a tool call (the crop tool then
    fetches the request, or the protocol's fallback: the whole image); a request cut off by the per-turn budget
    is not served (TRL cannot close its message as the session does)."""
    from edge_awares.session import stop_token_ids
    from edge_awares.train.grpo import make_environment, make_response_parser

    s = setup
    parse = make_response_parser(s.proto, AWARES_CROPS, s.tok, stop_token_ids(s.tok))
    im_end = s.tok.token_id("<|im_end|>")
    answer = parse(s.tok.encode("K7P") + [im_end])
    assert answer == {"role": "assistant", "content": "K7P"}
    traj = s.trajs[0]
    env = make_environment(s.proto, AWARES_CROPS, s.renderer.geometry)()
    env.reset(image_path=str(traj.image), question="q")
    garbled = '<tool_call>\n{"name": crop, "regions": [</tool_call>'
    call = parse(s.tok.encode_markup(garbled) + [im_end])["tool_calls"][0]["function"]
    env.crop(**call["arguments"])
    assert env.fetched[-1].crop_id == "all" and env.parse_failures == 1
    cut = parse(s.tok.encode_markup('<tool_call>\n{"name": "crop", "arguments": {"regions": ["3"'))
    assert "tool_calls" not in cut and cut["content"].startswith("<tool_call>")


def test_environment_tool_schema_is_the_protocols(setup):
    from transformers.utils import get_json_schema

    from edge_awares.train.grpo import make_environment

    env = make_environment(setup.proto, AWARES_CROPS, setup.renderer.geometry)()
    schema = get_json_schema(env.crop)
    assert json.dumps(schema) == json.dumps(crop_tool_schema(AWARES_CROPS))


def test_environment_crop_parses_like_the_runtime(setup, tmp_path):
    from edge_awares.train.grpo import make_environment

    traj = setup.trajs[0]
    env = make_environment(setup.proto, AWARES_CROPS, setup.renderer.geometry)()
    env.reset(image_path=str(traj.image), question="q")
    content = env.crop(regions=["bottom right", "3"])  # a name and its id: one crop, as the session parses it
    assert [v.crop_id for v in env.fetched] == ["3"] and len(content) == 1 and content[0]["type"] == "image"
    assert content[0]["image"].size == (env.fetched[0].width, env.fetched[0].height)
    env.crop(region="nowhere")  # no usable region: the protocol's stated fallback (whole image), counted
    assert env.fetched[-1].crop_id == "all" and env.parse_failures == 1


def test_stock_trl_collator_misses_tool_images_and_tools(setup):
    """The two traps the SFT collator fixes: TRL's vision collator fills no image placeholder inside a tool turn,
    and renders without the `tools` column (so the crop tool would vanish from the system prompt)."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    s = setup
    traj = next(t for t in s.trajs if t.label == "HR")
    row = s.renderer.row(traj)
    images = [s.renderer.resolve_view(r) for r in row["images"]]
    from edge_awares.train.render import model_image

    stock = DataCollatorForVisionLanguageModeling(processor=s.processor)
    with pytest.raises(ValueError, match="does not match number of image placeholders"):
        stock([{**row, "images": [model_image(v) for v in images]}])
    lr = s.renderer.row(next(t for t in s.trajs if t.label == "LR"))
    lr_images = [model_image(s.renderer.resolve_view(r)) for r in lr["images"]]
    plain = stock([{**lr, "images": lr_images}])
    ours = s.collator([lr])
    assert "<tools>" not in s.tok.decode(plain["input_ids"][0].tolist(), skip_special_tokens=False)
    assert "<tools>" in s.tok.decode(ours["input_ids"][0].tolist(), skip_special_tokens=False)


def test_qwen25vl_template_cannot_render_tool_calls(setup):
    from trl.chat_template_utils import qwen2_5_vl_chat_template, supports_tool_calling

    proc = setup.processor
    assert supports_tool_calling(proc)  # TRL's qwen3_vl template, which make_processor installs
    own = proc.chat_template
    try:
        proc.chat_template = qwen2_5_vl_chat_template
        assert not supports_tool_calling(proc)
    finally:
        proc.chat_template = own


def test_trl_parses_only_tool_call_requests(setup):
    from trl.chat_template_utils import add_response_schema, parse_response

    proc = setup.processor
    add_response_schema(proc)
    tok = proc.tokenizer
    prefix = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    first = setup.proto.first_view  # request_text of tool_call and awares ignores the view
    for name, expect in (("tool_call", ["3"]), ("awares", None)):
        text = get_protocol(name).request_text(["3"], AWARES_CROPS, first, None) + "<|im_end|>"
        parsed = parse_response(tok, tok(text, add_special_tokens=False)["input_ids"], prefix=prefix)
        calls = parsed.get("tool_calls")
        assert (calls[0]["function"]["arguments"]["regions"] if calls else None) == expect
    from edge_awares.train.config import GRPORunConfig

    with pytest.raises(ConfigError, match="tool_call"):
        GRPORunConfig(model=str(tiny_base()), data=str(tiny_base()), output="x", protocol="awares").validate()


def test_sampled_mask_drops_template_newline():
    import torch

    # ids: 7 = <|im_end|>; the template marks "a b <|im_end|> \n" of two assistant turns
    ids = torch.tensor([[1, 2, 3, 7, 9, 4, 5, 7, 9]])
    marks = torch.tensor([[0, 1, 1, 1, 1, 0, 1, 1, 1]])
    mask, w = sampled_mask(ids, marks, [[5.0, 1.0]], im_end_id=7)
    assert mask.tolist() == [[0, 1, 1, 1, 0, 0, 1, 1, 0]]
    assert w.tolist() == [[0, 5, 5, 5, 0, 0, 1, 1, 0]]
    with pytest.raises(TrainError, match="assistant spans"):
        sampled_mask(ids, marks, [[5.0]], im_end_id=7)


def test_data_not_matching_the_protocol_or_crop_set(setup):
    s = setup
    hr = next(t for t in s.trajs if t.label == "HR")
    bad = Trajectory.from_sample(SimpleNamespace(id="x", image=hr.image, question="q", answers=["a"], source=None,
                                                 meta={}), ["9"])
    with pytest.raises(TrainError, match="not in crop set"):
        s.renderer.row(bad)
    plain = TrajectoryRenderer(get_protocol("plain"), AWARES_CROPS, s.info.geometry)
    with pytest.raises(TrainError, match="cannot express a crop request"):
        plain.row(hr)
    from edge_awares.train.sft import check_trajectories

    hr.meta = {"protocol": "awares"}
    with pytest.raises(TrainError, match="made for protocol 'awares'"):
        check_trajectories([hr], s.proto, AWARES_CROPS)
    broken = Trajectory(id="y", image=hr.image, question="q", answers=["a"], label="LR", crop_ids=[],
                        messages=[{"role": "assistant", "content": [{"type": "text", "text": "a"}]}])
    with pytest.raises(DataError, match="no user turn"):
        s.renderer.row(broken)


def test_model_trained_for_another_protocol_is_refused(tmp_path):
    from edge_awares.train.runlog import check_policy, write_policy

    write_policy(tmp_path, get_protocol("awares"), AWARES_CROPS, "base", "sft")
    with pytest.raises(TrainError, match="trained with protocol"):
        check_policy(tmp_path, get_protocol("tool_call"), AWARES_CROPS)
    check_policy(tmp_path, get_protocol("awares"), AWARES_CROPS)
