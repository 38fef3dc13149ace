"""The book's tooling, apart from the numerical library: executing the notebooks with
papermill under a parameter profile (:mod:`localsgd_book.pipeline`), and the verdict boxes and
glue the notebooks use (:mod:`localsgd_book.report`). ``localsgd`` never imports this package."""
