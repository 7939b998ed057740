"""HTTP: routes (`api`), browser pages (`pages`) and their rendering (`templating`)."""
