from streamproc.pipeline.offsets import HandedOffsets, Jump


def test_a_new_generation_is_checked_against_the_committed_offset() -> None:
    handed = HandedOffsets()
    assert handed.hand("t", 0, 1, 15) == Jump("t", 0, None, 15)
    assert handed.hand("t", 0, 1, 16) is None
    # Faust seeks back to the committed offset on every assignment, this worker's own too.
    assert handed.hand("t", 0, 2, 15) == Jump("t", 0, None, 15)


def test_a_jump_within_a_generation_names_the_offsets_in_between() -> None:
    handed = HandedOffsets()
    handed.hand("t", 0, 1, 15)
    assert handed.hand("t", 0, 1, 48) == Jump("t", 0, 16, 48)
    assert handed.hand("t", 0, 1, 49) is None


def test_partitions_are_followed_apart() -> None:
    handed = HandedOffsets()
    handed.hand("t", 0, 1, 5)
    handed.hand("t", 1, 1, 9)
    assert handed.hand("t", 0, 1, 6) is None
    assert handed.hand("u", 0, 1, 6) == Jump("u", 0, None, 6)
