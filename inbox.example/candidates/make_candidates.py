#!/usr/bin/env python3
"""Generate inbox.example/candidates/candidates.csv: ~200 synthetic candidates.

Deterministic: a seeded ``random.Random`` and plain lists only (no sets or dict
ordering that could vary), so running it twice gives byte-identical output:

    python3 inbox.example/make_candidates.py            # writes the CSV
    python3 inbox.example/make_candidates.py -o -       # prints it instead

Every person, company and history here is invented. The rows deliberately carry
what real exports carry: commas and double quotes inside fields, non-ASCII names
(combining marks, CJK, Greek), a few empty skills/summary cells, one-line and
paragraph-long summaries, and a mix of strong and weak fits for the opening in
``candidates/rubric.md`` (Senior Data Engineer).
"""
from __future__ import annotations

import argparse
import csv
import io
import pathlib
import random
import sys

SEED = 20250107
COUNT = 200
COLUMNS = ["candidate_id", "name", "location", "current_title",
           "years_experience", "skills", "summary"]
OUT = pathlib.Path(__file__).resolve().parent / "candidates.csv"

FIRST = ["Anna", "Ben", "Chloé", "Daniel", "Elif", "Farah", "Gabriel", "Hana",
         "Ivan", "Jonas", "Kwame", "Lena", "Mateo", "Nadia", "Oskar", "Priya",
         "Quentin", "Rosa", "Sami", "Tomasz", "Uma", "Víctor", "Wen", "Yara",
         "Zainab", "Aoife", "Bogdan", "Camila", "Dmitri", "Esther", "Felipe",
         "Greta", "Hiroshi", "Ingrid", "Jakub", "Kofi", "Lucía", "Malik", "Noor",
         "Olga", "Pedro", "Rahul", "Sofia", "Thabo", "Ulrike", "Vera", "Wojciech"]
LAST = ["Schmidt", "Okafor", "Dubois", "Kowalski", "Yılmaz", "Haddad", "Silva",
        "Novák", "Ivanova", "Lindqvist", "Mensah", "Fischer", "García", "Rahman",
        "Berg", "Sharma", "Moreau", "Costa", "Virtanen", "Zieliński", "Iyer",
        "Herrera", "Chen", "Khalil", "Bello", "Murphy", "Popescu", "Rojas",
        "Petrov", "Cohen", "Pereira", "Jensen", "Sato", "Larsen", "Dvořák",
        "Boateng", "Fernández", "Qureshi", "Abbasi", "Kuznetsova", "Alves",
        "Gupta", "Rossi", "Nkosi", "Weiß", "Horvat", "Wiśniewski"]
# Names that must appear somewhere (placed at seeded positions).
FEATURED = ["Zoë Laurent", "José Álvarez", "Łukasz Wróbel", "Søren Østergaard",
            "田中 美咲", "Đặng Văn Minh", "Inés Ñúñez", "Björk Guðmundsdóttir",
            'Katarzyna "Kasia" Nowak', "Siobhán O'Brien", "Nguyễn Thị Lan",
            "Αλέξανδρος Παπαδόπουλος", "Oluwaseun Adébáyọ̀", "Çağla Öztürk",
            "Jean-Luc D'Arcy, Jr.", "李 伟", "Mārtiņš Bērziņš", "Zoë Björk-Ñúñez"]
LOCATIONS = ["Berlin, Germany", "Remote (EU)", "São Paulo, Brazil",
             "Kraków, Poland", "Hanoi, Vietnam", "Tokyo, Japan", "Austin, TX, USA",
             "Lagos, Nigeria", "Copenhagen, Denmark", "Reykjavík, Iceland",
             "Bengaluru, India", "Toronto, ON, Canada", "Madrid, Spain",
             "Dublin, Ireland", "Rotterdam, Netherlands", "Remote (US, Eastern time)",
             "Zürich, Switzerland", "Seoul, South Korea", "Lisbon, Portugal"]
COMPANIES = ["Globex Freight", "Initech", "Vandelay Industries", "Umbrella Shipping",
             "Hooli", "Nakatomi Trading", "Wayne Logistics", "Stark Retail",
             "Pied Piper", "Oceanic Airlines", "Soylent Foods", "Cyberdyne Health"]

# Archetypes: (weight, titles, (min_years, max_years), core skills, extra skills, summary pool)
ARCHETYPES = [
    ("strong", 22,
     ["Senior Data Engineer", "Staff Data Engineer", "Lead Data Engineer",
      "Data Platform Engineer"],
     (6, 14),
     ["Python", "SQL", "Airflow", "Snowflake", "dbt", "Spark", "Kafka", "BigQuery",
      "Terraform", "Dagster", "Postgres", "AWS"],
     ["data modeling", "CI/CD", "Great Expectations", "Kubernetes", "Flink", "Docker"],
     ["Owns the batch and streaming pipelines at {co}, {n} years hands-on in Python and SQL.",
      "Rebuilt {co}'s nightly ELT from cron scripts into Airflow + dbt, cutting late loads from weekly to almost never.",
      "Designed the shipment-event model in Snowflake that analysts call \"the one table that's always right\".",
      "Runs on-call for the data platform and wrote the runbooks; mentors two junior engineers.",
      "Moved 40 TB of warehouse data from Redshift to BigQuery with zero downtime, including backfills and cost controls.",
      "Comfortable with Kafka consumers, schema evolution and exactly-once-ish delivery in practice.",
      "Introduced data contracts and freshness SLAs; incidents dropped by half in a year."]),
    ("good", 20,
     ["Data Engineer", "Data Engineer II", "Analytics Engineer", "ETL Developer"],
     (3, 7),
     ["Python", "SQL", "Airflow", "dbt", "Postgres", "BigQuery", "Spark", "GCP",
      "Snowflake", "Docker"],
     ["Looker", "pandas", "Git", "Fivetran", "Terraform"],
     ["Builds and maintains dbt models and Airflow DAGs at {co} for finance and operations.",
      "{n} years of SQL-heavy work; recently started writing Spark jobs for larger tables.",
      "Took over a fragile set of ETL jobs and added tests, alerting and documentation.",
      "Wants to grow into a senior role with more ownership of platform decisions.",
      "Built an ingestion service in Python that pulls carrier APIs into Postgres every 15 minutes.",
      "Some streaming exposure (a Kafka proof of concept), mostly batch so far."]),
    ("adjacent", 18,
     ["Backend Engineer", "Software Engineer", "Machine Learning Engineer",
      "Site Reliability Engineer", "Data Scientist"],
     (3, 12),
     ["Python", "Go", "Java", "Kubernetes", "Postgres", "AWS", "SQL", "Docker"],
     ["scikit-learn", "PyTorch", "Redis", "gRPC", "Terraform", "Prometheus"],
     ["Backend engineer at {co} building order and billing APIs; writes plenty of SQL but no warehouse work.",
      "ML engineer who spends \"80% of the time on data plumbing\" and wants to do that full time.",
      "SRE with {n} years keeping Kubernetes clusters and Postgres fleets healthy.",
      "Built feature pipelines feeding fraud models; comfortable with Spark, less so with modeling for analytics.",
      "Data scientist moving towards engineering, has shipped two Airflow DAGs to production.",
      "Strong software engineering fundamentals: testing, code review, CI, incident response."]),
    ("weak", 20,
     ["Data Analyst", "BI Developer", "Junior Data Engineer", "Reporting Specialist",
      "Business Analyst"],
     (1, 5),
     ["Excel", "SQL", "Tableau", "Power BI", "Python", "Looker"],
     ["VBA", "pandas", "Google Sheets", "SSIS", "Alteryx"],
     ["Builds dashboards in Tableau and Power BI for the sales team at {co}.",
      "Writes SQL queries for ad-hoc reports; learning Python through an online course.",
      "Recent bootcamp graduate, completed a capstone project with \"a real Airflow DAG\".",
      "Maintains a large Excel model with VBA macros that the finance team relies on.",
      "{n} years in reporting; no production pipeline or on-call experience yet.",
      "Eager to learn, looking for a junior or mid-level data role."]),
    ("off", 10,
     ["Marketing Manager", "Registered Nurse", "Operations Coordinator",
      "Graphic Designer", "Sales Executive", "Teacher"],
     (1, 15),
     ["Salesforce", "Canva", "Photoshop", "Excel", "HubSpot", "Project management",
      "Public speaking"],
     ["SEO", "Figma", "Customer service", "Scheduling"],
     ["Career changer from {field}; finished an introductory SQL course last month.",
      "{n} years in {field}, \"fascinated by data\" and applying to many roles.",
      "Runs campaigns and reads the reports others build; has not written code professionally.",
      "Organised, reliable, great with people."]),
    ("redflag", 10,
     ["Head of Data", "Director of Analytics", "Data Engineering Manager",
      "Principal Consultant"],
     (12, 25),
     ["Stakeholder management", "Strategy", "SQL", "Hadoop", "Informatica",
      "Oracle", "Team leadership"],
     ["Budgeting", "Vendor management", "Agile", "Data governance"],
     ["Has led teams of 20+ people; last wrote production code \"around 2014\".",
      "Eight employers in the last six years, each for under a year, at {co} and elsewhere.",
      "Sets data strategy and vendor roadmaps; delegates all implementation.",
      "Claims \"expert in every database\" and lists 40 tools, none with concrete projects.",
      "Deep Hadoop and Informatica background, no cloud warehouse or Python experience.",
      "Prefers a hands-off role focused on slide decks for executives."]),
]
FIELDS = ["marketing", "nursing", "hospitality", "teaching", "retail", "sales"]


def _summary(rng: random.Random, pool: list[str], years: int) -> str:
    # One sentence up to a short paragraph.
    k = rng.choice([1, 1, 2, 2, 3, 4])
    picked = rng.sample(pool, min(k, len(pool)))
    text = " ".join(picked)
    return text.format(co=rng.choice(COMPANIES), n=years, field=rng.choice(FIELDS))


def _skills(rng: random.Random, core: list[str], extra: list[str]) -> str:
    n_core = rng.randint(2, min(6, len(core)))
    chosen = rng.sample(core, n_core) + rng.sample(extra, rng.randint(0, 2))
    return ", ".join(chosen)


def rows() -> list[list[str]]:
    rng = random.Random(SEED)
    weights = [a[1] for a in ARCHETYPES]
    featured_at = rng.sample(range(COUNT), len(FEATURED))
    # About five deliberately empty cells: (row index, column name).
    empties = [(i, col) for i, col in zip(rng.sample(range(COUNT), 5),
                                          ["skills", "summary", "skills", "summary", "skills"])]
    out: list[list[str]] = []
    for i in range(COUNT):
        kind, _w, titles, (lo, hi), core, extra, pool = rng.choices(ARCHETYPES, weights)[0]
        if i in featured_at:
            name = FEATURED[featured_at.index(i)]
        else:
            name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        years = rng.randint(lo, hi)
        row = {
            "candidate_id": f"C{i + 1:04d}",
            "name": name,
            "location": rng.choice(LOCATIONS),
            "current_title": rng.choice(titles),
            "years_experience": str(years),
            "skills": _skills(rng, core, extra),
            "summary": _summary(rng, pool, years),
        }
        for idx, col in empties:
            if idx == i:
                row[col] = ""
        out.append([row[c] for c in COLUMNS])
    return out


def render() -> bytes:
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    w.writerow(COLUMNS)
    w.writerows(rows())
    return buf.getvalue().encode("utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default=str(OUT),
                    help="where to write the CSV ('-' for stdout); default: %(default)s")
    args = ap.parse_args(argv)
    data = render()
    if args.output == "-":
        sys.stdout.buffer.write(data)
    else:
        path = pathlib.Path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"wrote {path} ({COUNT} rows, {len(data)} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
