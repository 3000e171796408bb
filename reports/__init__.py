"""Results -> pandas tables, matplotlib charts and the report page. Reads records; never trains.

``reports.tables.comparison_table`` / ``to_markdown``, ``reports.charts`` (one function per
chart, each returning a Figure; ``save`` writes PNG + SVG) and ``reports.page.build_report``
(a results folder -> CSV, Markdown, charts and one self-contained HTML page).
"""
