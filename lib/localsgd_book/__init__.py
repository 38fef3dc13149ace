"""The book's tooling, apart from the numerical library: where the book's files are
(:mod:`localsgd_book.layout`), the chapters' parameters, profiles and declared ranges
(:mod:`localsgd_book.parameters`), executing the notebooks with papermill and rendering the book
(:mod:`localsgd_book.pipeline`), what a chapter's kernel knows of its own run
(:mod:`localsgd_book.session`), the verdict and outcome boxes and glue the notebooks use
(:mod:`localsgd_book.report`), the verdict records and their provenance
(:mod:`localsgd_book.records`), what an executed notebook looks like on the page
(:mod:`localsgd_book.tidy`), the intro's scoreboard (:mod:`localsgd_book.scoreboard`), what a
build ran with (:mod:`localsgd_book.environment`), the rendered files
(:mod:`localsgd_book.sitefiles`) and a small Sphinx extension (:mod:`localsgd_book.sphinx_ext`).
``localsgd`` never imports this package."""
