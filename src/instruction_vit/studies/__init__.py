"""Studies: experiment specs (:mod:`.specs`) and the grid of cells they make (:mod:`.grid`), each cell keyed by
what it computes (:mod:`.keys`), recording how it ended (:mod:`.cell_record`) and claimed while it runs
(:mod:`.claims`); the runner (:mod:`.runner`), in local workers (:mod:`.workers`) or Slurm jobs (:mod:`.slurm`);
where each cell stands (:mod:`.states`), what the cells measured (:mod:`.measurements`), tables and charts
(:mod:`.report`), and the offline demo (:mod:`.demo`)."""
