"""Word k of a caption and the attention map shown for it are one step of the decoder: the α that ``one_step``
computed at the step whose prediction was word k (its input: word k - 1). Checked against ``one_step`` run by
hand along the decoded words, through beam search (beams reordered and retired), ``caption_images``'s words and
the caption figure's panels."""

import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402
import torch  # noqa: E402
from test_decoding import WORD_MAP, C, make  # noqa: E402

from captioning.adaptive import DecoderWithAdaptiveAttention  # noqa: E402
from captioning.decoding import beam_search, words_and_alphas  # noqa: E402
from captioning.evaluation.figures import caption_figure  # noqa: E402
from captioning.models import DecoderWithAttention  # noqa: E402


@torch.no_grad()
def _replayed_alphas(dec, enc, tokens):
    """(len(tokens), P') α of each word, by feeding <start>, tokens[0], … to one_step one at a time: row k is
    the α of the step that received tokens[k - 1] and predicted tokens[k]."""
    e = enc.reshape(1, -1, enc.size(-1))
    h, c = dec.init_hidden_state(e)
    rows = []
    for prev in [WORD_MAP["<start>"], *tokens[:-1]]:
        _, alpha, h, c = dec.one_step(dec.embedding(torch.tensor([prev])), e, h, c)
        rows.append(alpha[0])
    return torch.stack(rows) if rows else None


@pytest.mark.parametrize("fast", [False, True], ids=["one_step", "fast_step"])
@pytest.mark.parametrize("beam", [1, 4])
@pytest.mark.parametrize("cls", [DecoderWithAttention, DecoderWithAdaptiveAttention], ids=["attention", "adaptive"])
def test_the_map_of_word_k_is_the_alpha_that_produced_word_k(cls, beam, fast):
    dec = make(cls)
    torch.manual_seed(3)
    enc = torch.randn(8, 3, 3, C)
    caps = beam_search(dec, enc, WORD_MAP, beam_size=beam, max_len=12, fast=fast)
    assert sum(len(c.tokens) for c in caps) > 10, "test needs captions with words"
    assert len({len(c.tokens) for c in caps}) > 1, "test needs captions of different lengths"
    for i, cap in enumerate(caps):
        assert cap.alphas.shape[0] == len(cap.tokens)
        if cap.tokens:
            torch.testing.assert_close(cap.alphas, _replayed_alphas(dec, enc[i], cap.tokens), rtol=1e-4, atol=1e-5)
            # the map one step earlier or later is another one: the check above can tell a shift
            if len(cap.tokens) > 1:
                assert not torch.allclose(cap.alphas[1:], cap.alphas[:-1], atol=1e-3)


def test_words_skip_special_tokens_with_their_maps():
    rev = {v: k for k, v in WORD_MAP.items()}
    tokens = [1, WORD_MAP["<pad>"], 2, WORD_MAP["<start>"], 3]
    alphas = torch.eye(5)
    words, kept = words_and_alphas(tokens, alphas, rev)
    assert words == ["w1", "w2", "w3"]
    assert kept.argmax(1).tolist() == [0, 2, 4]  # each word keeps its own row, not its neighbour's
    assert words_and_alphas(tokens, None, rev) == (["w1", "w2", "w3"], None)


def test_the_panel_of_word_k_shows_row_k():
    # 3×3 grid; word k's map is all on cell k: the panel titled with word k must peak there
    words = ["a", "red", "square", "and", "star"]
    alphas = torch.full((5, 9), 0.01)
    for k in range(5):
        alphas[k, k] = 0.92
    pixels = torch.zeros(30, 30, 3, dtype=torch.uint8).numpy()
    fig = caption_figure({"pixels": pixels, "words": words, "alphas": alphas})
    panels = [ax for ax in fig.axes if len(ax.get_images()) == 2]
    assert [ax.get_title().split("\n")[0] for ax in panels] == words
    for k, ax in enumerate(panels):
        shown = ax.get_images()[1].get_array()  # (30, 30), the map upsampled to the image
        r, c = divmod(int(shown.argmax()), shown.shape[1])
        assert (r // 10, c // 10) == divmod(k, 3), f"panel '{words[k]}' peaks in the cell of another word"
