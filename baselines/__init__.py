"""The paper's benchmarks beside the federation: a centralised job and an Apache Spark job.

Both prepare rows exactly as the federation does (`baselines.data`), train the same models
(`baselines.models`) and write results files of the server's shape (`baselines.results`);
`baselines.reproduce` runs all three frameworks and writes the paper's tables and a report.
"""
