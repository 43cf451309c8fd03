"""Using a trained model: BLEU and the COCO metrics (``metrics``, ``cocoeval``), evaluation, captioning and the
pointing game (``evaluate``), figures (``figures``) and the files they write (``outputs``)."""
