FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY aetheris ./aetheris
COPY streams ./streams
COPY avro_schemas ./avro_schemas
RUN pip install --no-cache-dir .
ENTRYPOINT []
CMD ["aetheris", "--help"]
