# One image for workers, Flower and the demo producer.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY inferfleet ./inferfleet
# files: CSV and Parquet for `inferfleet submit`; frames: DataFrames in the client.
RUN pip install --no-cache-dir '.[files,frames,tracing]'
# Models are mounted read-only at /models (see docker-compose.yml).
ENV INFERFLEET_MODELS_DIR=/models
USER nobody
ENTRYPOINT ["inferfleet"]
CMD ["worker"]
