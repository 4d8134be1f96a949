"""Reports from stored results: record selection and task/model metadata (`select`), number
formatting (`format`), accuracy statistics (`stats`), tables (`tables`: numeric DataFrames in a
`Table`), their Markdown / LaTeX / HTML (`render`, through pandas' Styler and to_markdown), plots
(`plots`), the self-contained HTML report (`html`), run-to-run comparison (`compare`) and the
`table` / `report` / `compare` subcommands (`cli`). Data flows one way:
`harness.store.load_records` -> select -> tables / plots -> render -> report.

The submodules are imported on use (pandas, plotly and jinja2 are not needed to build the CLI):

    from harness.report.html import write_report
    from harness.report.compare import compare_runs
    from harness.report.tables import all_tables
    from harness.report.render import render
"""
