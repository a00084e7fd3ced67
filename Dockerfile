FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends espeak-ng redis-tools \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir torch==2.13.0 && pip install --no-cache-dir '.[llm,media]'
ENTRYPOINT []
