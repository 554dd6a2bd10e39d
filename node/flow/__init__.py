"""How work moves: routing stable series to jobs, running a job's plan on an executor, the
outbox that delivers its objects, retrieval of missing source series and Orthanc feeds."""
