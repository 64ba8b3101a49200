"""mammoclip.text: report text, from a raw radiology report to captions and prompts.

* :mod:`~mammoclip.text.reports` -- section parsing, sentence splitting, normalisation, BI-RADS and density;
* :mod:`~mammoclip.text.prompts` -- label -> sentence templates and zero-shot prompt sets (data in ``prompt_data/``);
* :mod:`~mammoclip.text.augment` -- caption augmenters (shuffle, drop, lexicon, back-translation);
* :mod:`~mammoclip.text.stats` -- corpus statistics (token lengths against the encoder's limit).

Layer 0: no torch (``stats`` loads a tokenizer lazily). Nothing here knows about images or manifests.
"""
