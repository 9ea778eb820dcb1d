# Training image: CUDA PyTorch base, the same pins as pyproject.toml, a non-root user,
# `launch` as the entrypoint.
#
#   docker build -t launcher .
#   docker run --gpus all -v $PWD/runs:/home/launch/app/runs launcher recipe=resnet_finetune --gpus 1
FROM pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime

# ffmpeg: torchaudio.load through torchcodec (audio recipes)
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --shell /bin/bash launch
WORKDIR /home/launch/app

# Dependencies first (cached layer), pinned exactly as in pyproject.toml.
RUN pip install --no-cache-dir \
    torch==2.11.0 \
    torchvision==0.26.0 \
    torchaudio==2.11.0 \
    torchcodec==0.11.1 \
    accelerate==1.15.0 \
    deepspeed==0.19.8 \
    wandb==0.31.0 \
    click==8.5.1

COPY --chown=launch:launch pyproject.toml README.md ./
COPY --chown=launch:launch launcher ./launcher
COPY --chown=launch:launch recipes ./recipes
RUN pip install --no-cache-dir .

USER launch
ENV WANDB_MODE=offline
ENTRYPOINT ["launch"]
CMD ["--help"]
