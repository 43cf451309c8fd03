"""The COCO caption metrics (pycocoevalcap): BLEU-1..4, METEOR, ROUGE-L and CIDEr-D, on text tokenised the way
the COCO toolkit does it (Stanford PTB tokenizer, lower case, punctuation removed).

Why its BLEU differs from ``metrics.bleu`` (nltk, the course's number): the COCO scorer tokenises the raw strings
itself, and computes the brevity penalty from the *closest* reference length per sentence summed over the corpus
with its own n-gram clipping code, while nltk's ``corpus_bleu`` works on the word indices the model produced
(``<unk>`` included) with its own closest-length rule. Small differences, same ranking in practice.

Java is needed by the PTB tokenizer and METEOR. Without Java, METEOR is skipped (reported as None) and a
Python tokenizer with the same rules (lower case, split on spaces, drop the COCO punctuation tokens) is used.
SPICE needs Stanford CoreNLP models downloaded at run time, which is impossible offline: it is left out.
"""

from __future__ import annotations

import re
import shutil

# the punctuation tokens the COCO PTBTokenizer removes
_PUNCT = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}


def java_available():
    return shutil.which("java") is not None


def _python_tokenize(captions):
    out = {}
    for key, caps in captions.items():
        out[key] = []
        for cap in caps:
            tokens = re.findall(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]", cap.lower())
            out[key].append(" ".join(t for t in tokens if t not in _PUNCT))
    return out


def coco_metrics(references, hypotheses):
    """Score captions with the COCO toolkit.

    Args:
        references: {image_id: [reference caption strings]}.
        hypotheses: {image_id: generated caption string}.
    Returns: dict with ``bleu1``…``bleu4``, ``meteor`` (None without Java), ``rouge_l``, ``cider_d``,
        ``tokenizer`` ("ptb" or "python") and ``notes`` (what was skipped and why).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {k: [{"caption": c} for c in v] for k, v in references.items()}
    res = {k: [{"caption": v}] for k, v in hypotheses.items()}
    notes = ["SPICE left out: it downloads Stanford CoreNLP models at run time (no internet here)"]
    if java_available():
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tok = PTBTokenizer()
        gts_t, res_t, tokenizer = tok.tokenize(gts), tok.tokenize(res), "ptb"
    else:
        gts_t = _python_tokenize({k: [c["caption"] for c in v] for k, v in gts.items()})
        res_t = _python_tokenize({k: [c["caption"] for c in v] for k, v in res.items()})
        tokenizer = "python"
        notes.append("Java not found: METEOR skipped, Python tokenizer used instead of the PTB tokenizer")
    out = {"tokenizer": tokenizer, "notes": notes}
    bleu_scores, _ = Bleu(4).compute_score(gts_t, res_t, verbose=0)
    out.update({f"bleu{i + 1}": float(s) for i, s in enumerate(bleu_scores)})
    out["rouge_l"] = float(Rouge().compute_score(gts_t, res_t)[0])
    out["cider_d"] = float(Cider().compute_score(gts_t, res_t)[0])
    out["meteor"] = None
    if tokenizer == "ptb":
        from pycocoevalcap.meteor.meteor import Meteor

        meteor = Meteor()  # a Java subprocess, ended by Meteor.__del__
        out["meteor"] = float(meteor.compute_score(gts_t, res_t)[0])
        del meteor
    return out
