"""darkminer drops transformers' torchvision-fallback notice and nothing else."""

import logging

import darkminer  # noqa: F401  (installs the filter)


def _passes(message: str) -> bool:
    logger = logging.getLogger("transformers.utils.import_utils")
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 0, message, None, None)
    return bool(logger.filter(record))


def test_the_torchvision_fallback_notice_is_dropped():
    assert not _passes("`CLIPImageProcessor` requires torchvision (not installed); falling back to `X`.")


def test_other_transformers_messages_pass():
    assert _passes("Could not import module 'CLIPModel'.")
