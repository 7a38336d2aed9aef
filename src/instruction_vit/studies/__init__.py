"""Studies: experiment specs (:mod:`.specs`) and the grid of cells they make (:mod:`.grid`), each cell keyed by
what it computes (:mod:`.keys`) and recording how it ended (:mod:`.cell_record`); the runner (:mod:`.runner`), where
each cell stands (:mod:`.states`), what the cells measured (:mod:`.measurements`), tables and charts
(:mod:`.report`), and the offline demo (:mod:`.demo`)."""
