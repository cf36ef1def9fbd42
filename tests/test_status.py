"""prmf-status's answers to folders that hold no sweep (the states of a running, killed and finished
sweep are tested on test_trackers' sweep, which this tier does not run)."""
from sweeps import status


def test_a_path_that_is_no_folder_is_one_line_and_an_empty_store_says_so(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert status.main([str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'file'}: not a folder\n"
    assert status.main([str(tmp_path)]) == 0 and capsys.readouterr().out == f"no sweeps in {tmp_path}\n"
