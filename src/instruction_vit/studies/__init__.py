"""Studies: experiment specs and their cells (the paper's tables, baselines, protocols), run and collected
(:mod:`.experiments`), reported as tables and charts (:mod:`.report`), and the offline demo (:mod:`.demo`)."""
