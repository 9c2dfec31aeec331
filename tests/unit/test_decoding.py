"""runners/decoding.py: what a checkpoint's generation_config asks for that the one decoding rule ignores, and
where generation stops."""


def test_decoding_rule_lists_what_the_checkpoint_asks_for(tmp_path):
    from pytest_npuprec.runners import decoding

    assert decoding.ignored_settings(tmp_path) == {}
    (tmp_path / "generation_config.json").write_text(
        '{"eos_token_id": [0, 2], "pad_token_id": 0, "do_sample": false, "temperature": 0.7, "top_p": 0.8, '
        '"repetition_penalty": 1.05, "bad_words_ids": [[5]], "min_new_tokens": 3, "transformers_version": "4"}')
    assert decoding.ignored_settings(tmp_path) == {"temperature": 0.7, "top_p": 0.8, "repetition_penalty": 1.05,
                                                   "bad_words_ids": [[5]], "min_new_tokens": 3}
    assert decoding.eos_ids([0, 2], 2) == {0, 2} and decoding.eos_ids(None, 3) == {3} and decoding.eos_ids(7, None) == {7}
