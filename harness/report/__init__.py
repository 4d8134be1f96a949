"""Reports from stored results: tables (`tables`), plots (`plots`), the self-contained HTML report
(`html`), run-to-run comparison (`compare`) and the `table` / `report` / `compare` subcommands
(`cli`). Data flows one way: `harness.store.load_records` -> tables / plots -> report.

The submodules are imported on use (pandas, plotly and jinja2 are not needed to build the CLI):

    from harness.report.html import write_report
    from harness.report.compare import compare_runs
    from harness.report.tables import render
"""
