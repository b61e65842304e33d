"""What the CLI prints: tables, the terminal plot, the progress line off a terminal."""

from __future__ import annotations

import io

from tunery_client import output


def test_table_aligns_columns_and_formats_cells() -> None:
    out = io.StringIO()
    output.table(["id", "loss", "done"], [["a", 0.123456, True], ["longer-id", None, False]], out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "ID         LOSS    DONE"
    assert lines[1] == "a          0.1235  yes"
    assert lines[2] == "longer-id  -       no"


def test_number_and_duration_formats() -> None:
    assert output.number(3) == "3"
    assert output.number(0.5) == "0.5000"
    assert output.number(2.5e-5) == "2.500e-05"
    assert output.duration(3725) == "1:02:05"
    assert output.duration(65.4) == "1:05"
    assert output.duration(None) == "-"
    assert output.bar(0.5, 4) == "██░░"


def test_plot_draws_a_line_and_points_between_the_extremes() -> None:
    out = io.StringIO()
    loss = [(float(step), 1.0 / step) for step in range(1, 41)]
    output.plot({"train_loss": loss, "eval_loss": [(20.0, 0.1), (40.0, 0.05)]}, 40, 10, out=out)
    lines = out.getvalue().splitlines()
    grid = [line.split("┤", 1)[1] for line in lines if "┤" in line]
    assert len(grid) == 10 and all(len(row) == 40 for row in grid)
    assert grid[0][0] == "•"  # the highest loss, at the first step, top left
    assert grid[-1][-1] in "•o"  # the lowest, at the last step, bottom right
    assert sum(row.count("o") for row in grid) == 2
    assert lines[0].startswith("1.0000") and "0.0250" in lines[9]
    assert lines[-1].strip() == "step: • train_loss   o eval_loss"


def test_status_line_off_a_terminal_prints_changes_at_most_every_interval() -> None:
    stream = io.StringIO()
    line = output.StatusLine(stream, every=3600)
    line.update("step 1")
    line.update("step 2")  # within the interval: held back
    line.message("an event")
    line.update("step 3", force=True)  # a final state always shows
    line.update("step 4")
    line.close()  # the last state is printed on close
    assert stream.getvalue().splitlines() == ["step 1", "an event", "step 3", "step 4"]
