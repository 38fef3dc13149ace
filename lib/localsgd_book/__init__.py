"""The book's tooling, apart from the numerical library: executing the notebooks with
papermill under a parameter profile and rendering the book (:mod:`localsgd_book.pipeline`),
the verdict boxes and glue the notebooks use (:mod:`localsgd_book.report`), what an executed
notebook looks like on the page (:mod:`localsgd_book.tidy`), the intro's scoreboard
(:mod:`localsgd_book.scoreboard`), the rendered files (:mod:`localsgd_book.sitefiles`) and a
small Sphinx extension (:mod:`localsgd_book.sphinx_ext`). ``localsgd`` never imports this
package."""
