"""Active learning: where the model is unsure, proposals for an analyst to label there.

The label project's file (:mod:`.project`), its geometry (:mod:`.geometry`), proposals
(:mod:`.propose`), segmenting for them and re-running (:mod:`.loop`), labels and the
label store (:mod:`.labels`), the judge (:mod:`.judge`), the round history
(:mod:`.history`) and the review of suspicious labels (:mod:`.review`). A round that
fine-tunes needs torch: it is ``cloudseg.training.label_round.LabelRound``, which calls
these (the backend never imports training).
"""
