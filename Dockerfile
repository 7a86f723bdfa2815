# One image for workers, Flower and the demo producer.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY inferfleet ./inferfleet
RUN pip install --no-cache-dir .
# Models are mounted read-only at /models (see docker-compose.yml).
ENV INFERFLEET_MODELS_DIR=/models
USER nobody
ENTRYPOINT ["inferfleet"]
CMD ["worker"]
