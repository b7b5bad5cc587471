# rankstream: one image for every part (worker, gateway, llm-sim); the command picks the part.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
RUN useradd --create-home --uid 10001 rankstream

COPY pyproject.toml README.md ./
COPY rankstream ./rankstream
COPY worker ./worker
COPY producer ./producer
RUN pip install --no-cache-dir .

USER rankstream
EXPOSE 8000 8001 9464
ENTRYPOINT ["rankstream"]
CMD ["--help"]
