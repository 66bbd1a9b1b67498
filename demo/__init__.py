"""``make demo``: the whole flow end to end, with an evidence report for teachers."""
