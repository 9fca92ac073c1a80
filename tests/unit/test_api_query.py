from relay.api.query import flag


def test_flag_reads_known_words_and_refuses_the_rest():
    for raw in ("1", "true", "TRUE", "yes", "on"):
        assert flag(raw) is True
    for raw in (None, "", "0", "false", "No", "off"):
        assert flag(raw) is False
    for raw in ("ture", "2", "maybe", " 1"):
        assert flag(raw) is None
