"""Results -> pandas tables, matplotlib charts and the report page. Reads records; never trains.

``locbench.reports.tables.comparison_table`` / ``to_markdown``, ``locbench.reports.charts`` (one
function per chart, each returning a Figure; ``save`` writes PNG + SVG) and
``locbench.reports.page.build_report`` (a results folder -> CSV, Markdown, charts and one
self-contained HTML page).
"""
